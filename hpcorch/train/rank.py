"""Run one rank of a training run: the one entry used by ``python -m hpcorch.train`` (the
processes of ``hpcorch train``) and by the submitit task (``hpcorch submit``).

Importing this module does not import torch; :func:`run_rank` does.
"""
from __future__ import annotations

import gc
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcorch import protocol
from hpcorch.train.startup import StartupClock

# Who started the rank: `hpcorch train` (no scheduler), Slurm, or submitit's local controller.
SCHEDULERS = ("process", "slurm", "local")


@dataclass(frozen=True)
class RankOutcome:
    """How the rank ended: :data:`protocol.DONE`, :data:`protocol.CHECKPOINTED` (then
    ``agreed_signal`` is the signal the ranks stopped on) or :data:`protocol.CLEAR_ERROR`."""

    exit_code: int
    agreed_signal: int = 0


def run_rank(job_file: str | Path, run_dir: str | Path, scheduler: str, peak_tflops: float | None = None,
             resume_step: int | None = None, overrides: list[str] | tuple[str, ...] = (),
             clock: StartupClock | None = None) -> RankOutcome:
    """Load the job, join the process group, train, leave the group together.

    ``scheduler`` ("process", "slurm" or "local") picks the stop signals
    (:func:`protocol.stop_signals`). A configuration or checkpoint problem is printed as one
    ``error: ...`` line on stderr and returned as :data:`protocol.CLEAR_ERROR`, no traceback.
    A rank that stops because another rank's checkpoint save failed prints no error of its own
    (the failing rank's line is the one that matters; rank 0 adds a short note to its log).
    ``clock``: the start-up clock of a rank forked by the node launcher, which marked the
    interpreter and the imports before the fork (a new one from this process's start otherwise).
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if clock is None:
        clock = StartupClock()
        clock.mark("interpreter")
    from hpcorch.errors import HpcorchError
    from hpcorch.spec.job import load_job
    from hpcorch.train.checkpoint.store import CheckpointError, PeerSaveFailed
    from hpcorch.train.distributed import abandon, init_distributed, shutdown
    from hpcorch.train.trainer import Trainer
    from hpcorch.util.diskspace import DiskFull

    clock.mark("imports")
    try:
        job = load_job(job_file, list(overrides))
        clock.mark("job")
        env = init_distributed(job.trainer.collective_timeout_s)
        clock.mark("process_group")
        setup_logging(env.rank)
        trainer = Trainer(job, Path(run_dir), env, protocol.stop_signals(scheduler, job.requeue),
                          peak_tflops=peak_tflops, resume_step=resume_step, clock=clock)
        code = trainer.run()
    except PeerSaveFailed as exc:
        logging.getLogger("hpcorch.train").info("hpcorch: stopping: %s", exc)
        return _leave_on_error(abandon)
    except (HpcorchError, CheckpointError) as exc:
        return _leave_on_error(abandon, exc)
    except RuntimeError as exc:
        # `hpcorch train`: a peer that vanished is said by the launcher, one line naming it and
        # its signal; this rank's gloo error is its consequence, not worth a traceback. Under a
        # scheduler the traceback stays, and recovery reads the error from the exit record.
        if scheduler != "process" or not protocol.PEER_LOST.search(str(exc)):
            raise
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        logging.getLogger("hpcorch.train").info("hpcorch: stopping: lost a peer rank (%s)", first[:300])
        abandon()
        return RankOutcome(1)
    except OSError as exc:
        if not DiskFull.applies(exc):
            raise
        # A full disk or quota outside atomic_write: one line naming the file system (a write()
        # to an open file names no file; the run directory is where it was going).
        return _leave_on_error(abandon, DiskFull(exc.filename or run_dir, exc))
    shutdown()
    outcome = RankOutcome(code, trainer.agreed_signal)
    # Free the model, its DDP reducer and the gloo group now, in a live interpreter: left to
    # the interpreter's exit, gloo's threads have been seen to abort the process (134) after
    # a successful run, which fails the job.
    del trainer
    gc.collect()
    return outcome


def _leave_on_error(abandon, error: Exception | None = None) -> RankOutcome:
    """Say ``error`` (if this rank has one of its own) as one line, leave the process group
    without waiting for peers, and end as :data:`protocol.CLEAR_ERROR`."""
    if error is not None:
        print(f"error: {error}", file=sys.stderr, flush=True)
    abandon()
    return RankOutcome(protocol.CLEAR_ERROR)


def setup_logging(rank: int) -> None:
    """Send hpcorch's log lines to this rank's stdout as bare messages: INFO on rank 0,
    warnings only on the others (their lines would repeat rank 0's). Leaves logging alone
    if the process (or its launcher) has configured it already."""
    root, ours = logging.getLogger(), logging.getLogger("hpcorch")
    if root.handlers or ours.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO if rank == 0 else logging.WARNING)
