"""Fault injection and tracing hooks for tests, all in one place. Each is off unless its
environment variable is set:

``HPCORCH_CRASH_IN_SAVE=STEP[:RANK]``
    The rank (every rank, or only ``RANK``) kills itself with SIGKILL halfway through really
    writing its first checkpoint file of step ``STEP``: the crash the commit protocol must
    survive (:func:`crash_in_save`, used as :func:`hpcorch.util.fileio.atomic_write`'s ``fault``).
``HPCORCH_SAMPLE_TRACE=DIR``
    Each rank appends the sample ids it trained on per step to ``DIR/rankN.jsonl``
    (:class:`SampleTrace`), with its attempt (Slurm's restart count), to check that a resume on
    another world size sees every sample once.
``HPCORCH_CRASH_IN_PRUNE=STEP``
    Rank 0 kills itself with SIGKILL halfway through deleting the old checkpoint of step
    ``STEP`` (:func:`crash_in_prune`): a pruned checkpoint must never look committed.
``HPCORCH_CRASH_IN_COMMIT=STEP``
    Rank 0 kills itself with SIGKILL halfway through writing step ``STEP``'s commit marker
    (:func:`crash_in_commit`): its temporary file must not outlive the next start.
``HPCORCH_START_DELAY_S=SECONDS``
    A submitted rank waits this long before it starts training (:func:`start_delay`): a window
    in which a signal reaches submitit's own handler, as an early preemption does.
``HPCORCH_STEP_DELAY_S=SECONDS``
    Every rank sleeps this long at the end of each step (:func:`after_step`), so that a test can
    act on a tiny job while it still trains (preempt it) however fast the machine is. Sleeping
    changes no number the run computes; the step's measured time includes it (a slower machine,
    as goodput and tokens/s see it).
``HPCORCH_CRASH_AT_STEP=STEP[:RANK[:HOW]]``
    After step ``STEP`` the rank (every rank, or only ``RANK``) fails, on every attempt: ``error``
    (default) raises an exception as a software bug would; ``kill`` sends itself SIGKILL as a
    GPU fault or the OOM killer would (:func:`after_step`). The crash-loop tests use it.
``HPCORCH_DROP_GRAD=RANK:NAME``
    Rank ``RANK`` zeroes its gradient of the parameters named with ``NAME`` after each backward
    (:func:`drop_grad`): the lost gradient that the layout tests must catch.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

CRASH_IN_SAVE = "HPCORCH_CRASH_IN_SAVE"
SAMPLE_TRACE = "HPCORCH_SAMPLE_TRACE"
START_DELAY = "HPCORCH_START_DELAY_S"
CRASH_IN_PRUNE = "HPCORCH_CRASH_IN_PRUNE"
CRASH_IN_COMMIT = "HPCORCH_CRASH_IN_COMMIT"
STEP_DELAY = "HPCORCH_STEP_DELAY_S"
DROP_GRAD = "HPCORCH_DROP_GRAD"
CRASH_AT_STEP = "HPCORCH_CRASH_AT_STEP"

Fault = Callable[[IO[bytes], bytes], None]


def crash_in_save(step: int, rank: int) -> Fault | None:
    """The ``fault`` hook that kills this process mid-write, if asked for at ``step`` and
    ``rank``; None otherwise."""
    spec = os.environ.get(CRASH_IN_SAVE)
    if not spec:
        return None
    want_step, _, want_rank = spec.partition(":")
    if int(want_step) != step or (want_rank and int(want_rank) != rank):
        return None
    return _kill_midway


def _kill_midway(f: IO[bytes], data: bytes) -> None:
    """Write and fsync half of ``data``, then die as a node failure would: no cleanup."""
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def crash_in_commit(step: int) -> Fault | None:
    """The ``fault`` hook for rank 0's commit marker of ``step``, if asked for; None otherwise."""
    return _kill_midway if os.environ.get(CRASH_IN_COMMIT) == str(step) else None


def crash_in_prune(step: int) -> None:
    """Called after each file of step ``step``'s checkpoint is deleted: dies at the first one
    if asked for."""
    if os.environ.get(CRASH_IN_PRUNE) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


class SampleTrace:
    """This rank's trace of the sample ids per step; does nothing unless enabled."""

    def __init__(self, rank: int, folder: str | None = None):
        folder = folder if folder is not None else os.environ.get(SAMPLE_TRACE)
        self.rank = rank
        # Which attempt traced a line: a step trained again after a failure is the later one's.
        self.attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        self._file = None
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            # kept open for the tracer's lifetime (a line per step); close() ends it
            self._file = open(Path(folder) / f"rank{rank}.jsonl", "a")  # noqa: SIM115 (open for the object's life)

    def write(self, step: int, samples: list[int]) -> None:
        """Record the samples this rank trained on at ``step``."""
        if self._file:
            self._file.write(json.dumps({"step": step, "rank": self.rank, "attempt": self.attempt,
                                         "samples": samples}) + "\n")
            self._file.flush()  # a rank killed outright (a node failure test) keeps its lines

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def start_delay() -> None:
    """Sleep ``HPCORCH_START_DELAY_S`` seconds, if set (only on the first attempt of a job)."""
    import time

    seconds = float(os.environ.get(START_DELAY, "0") or 0)
    if seconds > 0 and not int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0):
        # Said on stderr so a test knows this rank's signal handlers are in place (they are
        # installed after submitit logs "Loading pickle", so that line is too early a cue).
        print(f"hpcorch: {START_DELAY}: waiting {seconds:g} s before training", file=sys.stderr, flush=True)
        time.sleep(seconds)


def after_step(rank: int) -> Callable[[int], None]:
    """What a rank does after each step when asked (both read once): sleep
    ``HPCORCH_STEP_DELAY_S``, and fail at ``HPCORCH_CRASH_AT_STEP``. A no-op otherwise."""
    import time

    seconds = float(os.environ.get(STEP_DELAY, "0") or 0)
    crash_step, _, rest = os.environ.get(CRASH_AT_STEP, "").partition(":")
    want_rank, _, how = rest.partition(":")
    crashes = bool(crash_step) and (not want_rank or int(want_rank) == rank)

    def hook(step: int) -> None:
        if seconds > 0:
            time.sleep(seconds)
        if crashes and step == int(crash_step):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"{CRASH_AT_STEP}: injected failure after step {step} on rank {rank}")

    return hook


def drop_grad(parts, rank: int) -> None:
    """``HPCORCH_CRASH_AT_STEP=STEP[:RANK[:HOW]]``
    After step ``STEP`` the rank (every rank, or only ``RANK``) fails, on every attempt: ``error``
    (default) raises an exception as a software bug would; ``kill`` sends itself SIGKILL as a
    GPU fault or the OOM killer would (:func:`after_step`). The crash-loop tests use it.
``HPCORCH_DROP_GRAD=RANK:NAME``: rank ``RANK`` zeroes its (local) gradient of the
    parameters whose names contain ``NAME``, after the backward: a layout that silently loses a
    gradient, which the layout tests' tolerance must catch."""
    spec = os.environ.get(DROP_GRAD)
    if not spec:
        return
    who, _, name = spec.partition(":")
    if int(who) != rank:
        return
    for part in parts:
        for pname, p in part.named_parameters():
            if name in pname and p.grad is not None:
                g = p.grad
                (g.to_local() if hasattr(g, "to_local") else g).detach().zero_()
