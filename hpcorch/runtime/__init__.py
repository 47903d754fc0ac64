"""A tiny optional helper for a training program hpcorch did not write (``program:`` jobs).

Importable without torch. A program that uses none of it still gets requeue, health,
placement, manifests, logs and goodput by attempt; with it, ``status``, ``plot``, goodput and the
progress line see its steps and checkpoints too::

    from hpcorch import runtime

    for step in range(start, steps + 1):
        loss = train_step()
        runtime.report(step=step, loss=loss, tokens=tokens_per_step)
        if step % 50 == 0 or runtime.should_stop():   # agree across ranks before acting on it
            save(step)
            runtime.checkpoint_committed(step, path)
            if runtime.should_stop():
                runtime.exit_requeue()                  # "checkpointed, resume me"

Only rank 0 (``RANK``) writes; on the other ranks :func:`report` and :func:`checkpoint_committed`
do nothing. Outside an hpcorch run (no ``HPCORCH_RUN_DIR``) every call is a no-op too, so the
same script runs under plain torchrun.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from hpcorch.runtime import env as names
from hpcorch.runtime.env import requeue_marker

__all__ = ["should_stop", "report", "checkpoint_committed", "exit_requeue", "request_requeue",
           "attempt", "restart_cause", "time_left_s", "checkpoint_dir", "run_dir"]

_stop: dict = {"signum": None, "time": None}
_IMPORTED = time.time()  # the first step's start, at the latest
_reporter = None


def _on_signal(signum, _frame) -> None:
    # Only a flag: the program acts at its next step boundary (never inside the handler).
    _stop["signum"], _stop["time"] = signum, time.time()


def _install() -> None:
    """Catch the stop signal hpcorch delivers (``HPCORCH_STOP_SIGNAL``, USR2 by default)."""
    name = os.environ.get(names.STOP_SIGNAL) or "USR2"
    try:
        signal.signal(getattr(signal, f"SIG{name}"), _on_signal)
    except (ValueError, AttributeError):  # not the main thread, or an unknown name: no flag then
        pass


_install()


def should_stop() -> bool:
    """Whether hpcorch asked this process to stop (preemption or the time limit is near): save a
    checkpoint and exit with :func:`exit_requeue`. Each rank is signalled on its own, maybe a step
    apart: agree first (an all-reduce of the flag, MAX) so that every rank stops at the same step."""
    return _stop["signum"] is not None


def run_dir() -> str | None:
    return os.environ.get(names.RUN_DIR) or None


def checkpoint_dir() -> str | None:
    """Where to keep checkpoints (``HPCORCH_CHECKPOINT_DIR``); None outside hpcorch."""
    return os.environ.get(names.CHECKPOINT_DIR) or None


def attempt() -> int:
    """0 on the first start; +1 on every requeue."""
    return int(os.environ.get(names.ATTEMPT) or 0)


def restart_cause() -> str:
    """Why this attempt started: none (the first), preemption, timeout, node_failure or failure."""
    return os.environ.get(names.RESTART_CAUSE) or "none"


def time_left_s() -> float | None:
    """Seconds until the allocation ends (None when unknown)."""
    deadline = os.environ.get(names.DEADLINE)
    return float(deadline) - time.time() if deadline else None


def _is_main() -> bool:
    return run_dir() is not None and os.environ.get("RANK", "0") == "0"


def request_requeue() -> None:
    """Create this attempt's requeue marker: the program's exit (any code) then means "checkpointed,
    resume me" (for programs whose launcher hides their exit code, such as torchrun)."""
    if run_dir() is None:
        return
    path = os.environ.get(names.REQUEUE_MARKER) or requeue_marker(run_dir(), attempt())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{time.time()}\n")


def exit_requeue() -> None:
    """Exit with hpcorch's "checkpointed, resume me" code (3): requeued within the budget of the
    stop's cause (preemption or timeout)."""
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(int(os.environ.get(names.REQUEUE_EXIT) or 3))


def report(step: int, loss: float | None = None, tokens: int | None = None, **extra) -> None:
    """Record a finished optimizer step (rank 0): ``tokens`` trained in it over all ranks. Writes
    what hpcorch's trainer writes (``metrics.jsonl``, ``progress.json``, the first-step and
    process-start events), so goodput, ``status``, ``plot`` and ``logs`` read it alike."""
    global _reporter
    if not _is_main():
        return
    if _reporter is None:
        from hpcorch.runtime.records import Reporter

        _reporter = Reporter(run_dir(), _IMPORTED)
    _reporter.step(int(step), None if loss is None else float(loss), tokens, extra)


def checkpoint_committed(step: int, path: str | os.PathLike | None = None) -> None:
    """Say that the checkpoint of ``step`` is complete on disk (rank 0, after the program's own
    commit): ``status`` shows it as the latest checkpoint, and a restart that trains the steps
    after it again counts them as recomputed."""
    if not _is_main():
        return
    from hpcorch.runtime.records import commit

    commit(run_dir(), int(step), None if path is None else str(path))
