"""The node launcher: import torch and the trainer once, then fork this node's ranks.

``python -m hpcorch.train --nproc N --job JOB.yaml --run-dir DIR`` (what ``hpcorch train``
starts, :func:`hpcorch.train.spawn.launch_local`). Most of a rank's start-up is importing torch,
``torch._dynamo`` (which ``torch.optim`` imports on first use) and
``torch.distributed.checkpoint``; N interpreters doing it at once on a node share its cores. Here
one process imports them (:func:`preload`), then forks the N ranks, which share those pages.

Forking is only safe before any thread, OpenMP pool or CUDA context exists (a child would
inherit a lock held by a thread that is not there, or a GPU context it cannot use): the
launcher checks (:func:`fork_hazard`) and otherwise starts one interpreter per rank as before.
Each child is a rank exactly as if it had been started on its own:

- it restores the signal dispositions a fresh interpreter has (the launcher's forwarding
  handler must never run in a rank), with the stop signals blocked across the fork so none
  is lost or handled by the wrong process in between; the trainer then installs its own;
- it gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment and runs
  :func:`hpcorch.train.rank.run_rank`, and its exit code is the rank's (a Python exception: 1,
  with its traceback, as an interpreter would end);
- it dies with the launcher (``PR_SET_PDEATHSIG``), so a launcher killed outright leaves no rank.

The launcher forwards the stop signals to the ranks, reaps them by pid, and ends the others when
one fails, with :func:`hpcorch.train.spawn.forwarding` and :func:`~hpcorch.train.spawn.wait_all`,
the same code as for separate processes; it wakes on SIGCHLD, so the rank that failed first is
told from the peers that fail milliseconds later because it vanished.
Rank 0's ``startup_s`` counts from the launcher's own start (:func:`startup.set_process_start`):
the imports it made for the rank are part of the rank's start-up.
"""
from __future__ import annotations

import ctypes  # imported by the launcher, not by each rank
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from hpcorch.train.spawn import (
    FORWARDED,
    OnFailure,
    forwarding,
    free_port,
    launch_local,
    local_rank_env,
    report_death,
    wait_all,
)
from hpcorch.train.startup import StartupClock, set_process_start

log = logging.getLogger("hpcorch.train")


def preload() -> None:
    """Import everything a rank imports, so that no rank imports it again after the fork. No
    torch call that starts a thread pool or touches a GPU happens here.

    numpy's OpenBLAS starts its thread pool when it loads, one thread per core, unless
    OPENBLAS_NUM_THREADS says otherwise: set to 1 here (a user's own setting wins, and then
    :func:`fork_hazard` sees the threads). A rank computes with torch's pool, pinned to the job's
    CPUs; numpy only indexes its data, and N ranks each with an all-cores pool oversubscribe."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy.random  # noqa: F401  (seed_everything)
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim's constructors and step import it on first use)
    import torch.distributed.checkpoint.state_dict  # noqa: F401  (the checkpointer's state dicts)

    from hpcorch.train import rank, trainer  # noqa: F401
    from hpcorch.train.models import FAMILIES

    for spec in FAMILIES.values():  # each family's torch half (module, tp plan): a few ms each
        spec.parts()


def fork_hazard() -> str | None:
    """Why forking the ranks from this process would be unsafe now (a thread besides the main
    one, an initialised CUDA runtime or a loaded CUDA driver), or None."""
    try:
        tasks = len(os.listdir("/proc/self/task"))  # native threads too (OpenMP, gloo, CUDA)
    except OSError:
        tasks = threading.active_count()
    if tasks > 1:
        return f"{tasks} threads are running"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised"
    # Any CUDA runtime call (torch.cuda.is_available() too) loads the driver, which a child
    # cannot use after a fork; torch's own flag above only sees its lazy initialisation.
    try:
        with open("/proc/self/maps") as f:
            if "libcuda.so" in f.read():
                return "the CUDA driver is loaded"
    except OSError:
        pass
    return None


class ForkedRank:
    """A forked rank, polled and signalled by pid like a :class:`subprocess.Popen`."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code if the rank has ended (negative: the signal that ended it), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        """Block until the rank has ended; its exit code."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:  # a reaped pid may belong to another process by now
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


RankMain = Callable[[StartupClock], int]


def launch_forked(nproc: int, rank_main: RankMain, rank_argv: list[str], clock: StartupClock,
                  grace_s: float = 30.0, job_file: str | None = None, run_dir: str | None = None) -> int:
    """Run ranks 0..nproc-1 of this node, each ``rank_main(clock)`` in a child forked from this
    process after :func:`preload`, and return the run's exit code as
    :func:`hpcorch.train.spawn.launch_local` does. If forking is unsafe here (:func:`fork_hazard`),
    each rank is ``python -m hpcorch.train *rank_argv`` in an interpreter of its own instead.
    A rank killed by a signal is said as one line naming it and the run's last checkpoint
    (``job_file``, ``run_dir``: :func:`hpcorch.train.spawn.report_death`)."""
    set_process_start(clock.start)
    preload()
    clock.mark("imports")
    hazard = fork_hazard()
    if hazard is not None:
        log.warning("hpcorch: starting one interpreter per rank: forking them is unsafe (%s)", hazard)
        return launch_local(job_file, run_dir, nproc, argv=[sys.executable, "-u", "-m", "hpcorch.train", *rank_argv],
                            grace_s=grace_s, report_checkpoints=True)
    port = free_port()

    def child(rank: int) -> int:
        os.environ.update(local_rank_env(rank, nproc, port))
        clock.mark("fork")
        return rank_main(clock)

    return fork_and_wait([lambda r=r: child(r) for r in range(nproc)], [], grace_s,
                         on_failure=report_death(job_file, run_dir))


def fork_and_wait(children: list[Callable[[], int]], ranks: list[ForkedRank], grace_s: float,
                  signals: tuple[int, ...] = FORWARDED, forward: bool = True,
                  on_failure: OnFailure | None = None) -> int:
    """Fork one child per entry of ``children`` (each runs it and exits with its code), append
    them to ``ranks``, and wait for them all with :func:`hpcorch.train.spawn.wait_all`: the run's
    exit code. ``signals`` are the stop signals a child must see as a fresh interpreter would:
    blocked across the forks, then forwarded to the children, or (``forward=False``, where the
    scheduler signals every process of the step itself, as Slurm does) only kept from ending
    this process while the children handle their own. ``on_failure``: as for ``wait_all``."""
    pristine = {s: signal.getsignal(s) for s in signals}  # a fresh interpreter's, before forwarding
    launcher = os.getpid()
    # Blocked across the forks: a stop signal waits until the launcher forwards to every rank
    # forked so far, and never reaches a child before it has its own dispositions back.
    # SIGCHLD stays blocked in the launcher, so that it can wait for it (_until_a_rank_ends).
    signal.pthread_sigmask(signal.SIG_BLOCK, {*signals, signal.SIGCHLD})
    try:
        with forwarding(ranks, signals=signals, forward=forward):
            for main in children:
                pid = os.fork()
                if pid == 0:
                    _run_child(main, pristine, launcher, signals)
                ranks.append(ForkedRank(pid))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
            return wait_all(ranks, grace_s, pause=_until_a_rank_ends, on_failure=on_failure)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*signals, signal.SIGCHLD})


def _until_a_rank_ends(timeout_s: float) -> None:
    """Sleep ``timeout_s`` or until a rank ends (SIGCHLD), whichever is first. Waking at once
    matters: a rank killed outright makes its peers fail a collective milliseconds later; seen
    in the same poll, the lowest rank's failure would be taken for the root cause."""
    signal.sigtimedwait({signal.SIGCHLD}, timeout_s)


def _run_child(main: Callable[[], int], pristine: dict, launcher: int, signals: tuple[int, ...]) -> None:
    """The forked child: become the rank, run it and exit with its code; never returns."""
    code = 1
    try:
        for signum, handler in pristine.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*signals, signal.SIGCHLD})
        _die_with_parent(launcher)
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        _flush()
        # As an interpreter ends on an uncaught KeyboardInterrupt: killed by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
    finally:
        _flush()
        # Never back into the launcher's stack, and no launcher's exit handlers run in a rank
        # (gloo's destructors at an interpreter's exit have aborted ranks, see __main__).
        os._exit(code)


def _flush() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _die_with_parent(launcher: int) -> None:
    """Ask the kernel for SIGKILL when the launcher dies (Linux), so that a launcher killed
    outright leaves no rank training on its own; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher:  # it died before the request: too late to be told
            os._exit(128 + signal.SIGKILL)
    except (OSError, AttributeError):
        pass
