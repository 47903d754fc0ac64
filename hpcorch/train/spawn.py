"""``hpcorch train``: N local rank processes on this machine (gloo on CPU, NCCL on GPUs).

The launcher forwards the stop signals (SIGTERM, SIGINT, SIGUSR2) to every rank (each then
checkpoints at the next step boundary), and ends the others if one rank fails, so a dead peer
never hangs the run.

Why this launcher exists next to ``hpcorch submit -p local``: ``train`` is a foreground
command with no scheduler. A signal means "stop and let me run it again": every rank
checkpoints and the run exits :data:`protocol.CHECKPOINTED` (3); nothing restarts it.
``submit -p local`` goes through submitit's local controller to emulate a scheduler: requeue
by exit 144 (:data:`protocol.LOCAL_REQUEUE`), restart budgets, a job id. Both start each rank
through the same entry (:func:`hpcorch.train.rank.run_rank`, scheduler "process" here, "local"
there), with the exit codes and stop signals :mod:`hpcorch.protocol` names, and the
decision table (:func:`protocol.decide`) states both rows side by side (its "process" row:
stop, never requeue), so they cannot differ in restart semantics by accident.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from hpcorch.protocol import CHECKPOINTED, DONE, killed_by_text, stop_signals
from hpcorch.util.envswitch import on_unless_zero

FORWARDED = stop_signals("process", None)  # `hpcorch train` has no requeue policy
# "0": start one interpreter per rank instead of forking the ranks from one node launcher.
FORK_ENV = "HPCORCH_FORK_RANKS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(job_file: Path, run_dir: Path, nproc: int, extra_args: list[str] = (),
                 env: dict | None = None, grace_s: float = 30.0, argv: list[str] | None = None,
                 cwd: str | None = None, rank_env: Callable[[int, int, int], dict] | None = None,
                 report_checkpoints: bool | None = None) -> int:
    """Run ranks 0..nproc-1 of ``python -m hpcorch.train`` (or of ``argv``, a ``program:`` job's
    own program, in ``cwd``, with ``rank_env(rank, nproc, port)``'s variables instead of the
    rendezvous ones below) and return the run's exit code: DONE, CHECKPOINTED (every rank
    checkpointed on a signal), otherwise the first failing rank's code.

    hpcorch's own trainer runs as one node launcher (``python -m hpcorch.train --nproc N``,
    :mod:`hpcorch.train.forked`) that imports torch once and forks the ranks, unless
    ``HPCORCH_FORK_RANKS=0`` asks for one interpreter per rank.

    A rank killed by a signal is said as one ``error:`` line (:func:`report_death`), with the
    run's last checkpoint when ``report_checkpoints`` (default: hpcorch's trainer, no ``argv``;
    a program's checkpoints are its own)."""
    if argv is None and fork_ranks():
        cmd = [sys.executable, "-u", "-m", "hpcorch.train", "--nproc", str(nproc), "--job", str(job_file),
               "--run-dir", str(run_dir), *extra_args]
        # Its own session (as each rank's was): a Ctrl-C reaches only this process, which forwards it.
        procs = [subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True)]
        return supervise(procs, grace_s, group=True)  # the node launcher reports a rank's death itself
    port = free_port()
    procs = []
    for rank in range(nproc):
        where = rank_env(rank, nproc, port) if rank_env else local_rank_env(rank, nproc, port)
        rank_env_all = {**os.environ, **(env or {}), **where}
        cmd = argv or [sys.executable, "-u", "-m", "hpcorch.train", "--job", str(job_file),
                       "--run-dir", str(run_dir), *extra_args]
        procs.append(subprocess.Popen(cmd, env=rank_env_all, cwd=cwd, start_new_session=True))
    report = report_death(job_file, run_dir, checkpoints=argv is None if report_checkpoints is None
                          else report_checkpoints)
    return supervise(procs, grace_s, on_failure=report)


def fork_ranks() -> bool:
    """Whether hpcorch's trainer forks its ranks from one node launcher: ``HPCORCH_FORK_RANKS``
    unset, empty or ``1`` (the default); ``0`` starts one interpreter per rank. Any other value
    is a :class:`ConfigError` naming the variable: "false" or "no" would otherwise fork silently."""
    return on_unless_zero(FORK_ENV, "one interpreter per rank", "ranks forked from one node launcher, the default")


def local_rank_env(rank: int, nproc: int, port: int) -> dict[str, str]:
    """The rendezvous variables of rank ``rank`` of ``nproc`` on this machine."""
    return {"RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


class Supervised(Protocol):
    """What :func:`supervise` needs of a rank: :class:`subprocess.Popen`'s polling and signals."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def wait(self) -> int: ...


@contextlib.contextmanager
def forwarding(procs: list[Supervised], group: bool = False, signals: tuple[int, ...] = FORWARDED,
               forward: bool = True) -> Iterator[None]:
    """While inside: the stop signals this process gets (``signals``) go to every live process of
    ``procs`` (a list that may still grow), or with ``forward=False`` are only kept from ending
    this process (the scheduler signals every process itself). On the way out every process
    still running is killed (with its process group if ``group``: a node launcher's forked
    ranks), so none is left behind."""
    def relay(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def keep(_signum, _frame):  # a Python handler, not SIG_IGN: an exec'd rank must not inherit it
        pass

    previous = {s: signal.signal(s, relay if forward else keep) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:  # never leave a rank behind
            if p.poll() is None:
                if group:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                p.kill()
                p.wait()


OnFailure = Callable[[int, int], None]


def supervise(procs: list[Supervised], grace_s: float, group: bool = False,
              on_failure: OnFailure | None = None) -> int:
    """Forward the stop signals to ``procs`` and wait for them all (:func:`wait_all`)."""
    with forwarding(procs, group):
        return wait_all(procs, grace_s, on_failure=on_failure)


def wait_all(procs: list[Supervised], grace_s: float, pause: Callable[[float], None] = time.sleep,
             on_failure: OnFailure | None = None) -> int:
    """Wait for every process; when one fails, terminate the others (and kill those still
    running ``grace_s`` later). Returns DONE, CHECKPOINTED, or the first failure's code (a
    signal's as 128 + its number). Between polls: ``pause(0.05)``, which may return as soon as
    a process ends (then the first to fail is told from the peers that fail because of it).
    ``on_failure(rank, code)``: called once every process has ended, with the index and the
    raw code (negative: the signal that killed it) of that first failure."""
    first_rank = None  # the root cause, not a rank we terminated because of it
    failed_at = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        if failed_at is None and (first_rank := _root_cause_rank(codes)) is not None:
            failed_at = time.monotonic()
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        pause(0.05)
    codes = [p.returncode for p in procs]
    if first_rank is None:
        first_rank = _root_cause_rank(codes)
    if first_rank is None:
        return CHECKPOINTED if CHECKPOINTED in codes else DONE
    code = codes[first_rank]
    if on_failure is not None:
        on_failure(first_rank, code)
    return code if code > 0 else 128 - code


def _root_cause_rank(codes: list[int | None]) -> int | None:
    """Which process's failure to report of those first seen together: one killed outright (the
    OOM killer's or a GPU fault's SIGKILL, a segfault) before those that exited with an error or
    aborted, which is how peers fail when a rank vanishes under them (an exception from gloo;
    gloo's destructors can abort); else the lowest rank's, as before."""
    bad = [i for i, c in enumerate(codes) if c not in (None, DONE, CHECKPOINTED)]
    return min(bad, key=lambda i: not (codes[i] < 0 and codes[i] != -signal.SIGABRT)) if bad else None


def death_line(rank: int, code: int, checkpoints: Path | None) -> str | None:
    """One line for a rank killed by a signal (``code`` < 0, as :meth:`Popen.poll` says it):
    the rank, the signal, its likely sender and, with ``checkpoints`` (a checkpoint root), the
    step a run again resumes from. None for a rank that exited (its own output says why)."""
    if code >= 0:
        return None
    line = f"rank {rank} was killed by {killed_by_text(-code)}"
    if checkpoints is not None:
        from hpcorch.state.rundir import CheckpointLayout

        steps = CheckpointLayout(checkpoints).committed_steps()
        line += f"; the run's last checkpoint is step {steps[-1]}" if steps else "; the run has no checkpoint yet"
    return line


def report_death(job_file: str | os.PathLike | None, run_dir: str | os.PathLike | None,
                 checkpoints: bool = True) -> OnFailure:
    """The ``on_failure`` of a launcher: a rank killed by a signal is said as one ``error:`` line
    on stderr (:func:`death_line`), with the run's last checkpoint when ``checkpoints`` (the
    checkpoint root from ``job_file``, the run directory's resolved job, as the ranks read it)."""
    def say(rank: int, code: int) -> None:
        root = _checkpoint_root(job_file, run_dir) if checkpoints and run_dir is not None else None
        line = death_line(rank, code, root)
        if line is not None:
            print(f"error: {line}", file=sys.stderr, flush=True)  # the user's line, not a log record
    return say


def _checkpoint_root(job_file, run_dir) -> Path:
    """The run's checkpoint root: the job's ``trainer.checkpoint.dir``, else ``RUN/checkpoints``."""
    from hpcorch.errors import HpcorchError
    from hpcorch.spec.job import load_job
    from hpcorch.state.rundir import RunDir

    try:
        return RunDir.for_job(run_dir, load_job(job_file)).checkpoints
    except (HpcorchError, OSError, TypeError):
        return RunDir(run_dir).checkpoints
