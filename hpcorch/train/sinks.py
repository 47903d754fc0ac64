"""Optional destinations of rank 0's reports, chosen by the job's ``trainer.loggers``:
TensorBoard event files in ``RUN_DIR/tensorboard`` (tensorboardX: numpy and protobuf only, no
TensorFlow, no ``tensorboard`` server package) and W&B runs in offline mode in
``RUN_DIR/wandb`` (``wandb sync`` uploads them later, from a machine with a network).

Their packages are optional: :func:`hpcorch.spec.job.check_available` refuses a job that names a logger whose
package is missing with one line at plan, submit and train time, before any rank starts. The
packages themselves are imported only when rank 0 builds the sinks.
"""
from __future__ import annotations

import logging
import os

from hpcorch.spec.job import check_available
from hpcorch.state.rundir import RunDir
from hpcorch.train.runlog import Sink

log = logging.getLogger("hpcorch.train")

SCALARS = ("loss", "val_loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "mfu", "max_mem_mb", "eval_s")


def build_sinks(job, run: RunDir) -> tuple[Sink, ...]:
    """The sinks ``job.trainer.loggers`` asks for (rank 0 only)."""
    check_available(job.trainer.loggers, str(run.job_file))
    makers = {"tensorboard": TensorBoardSink, "wandb": WandbSink}
    return tuple(makers[name](run, job) for name in job.trainer.loggers)


def _scalars(record: dict) -> dict[str, float]:
    return {k: float(record[k]) for k in SCALARS if isinstance(record.get(k), (int, float))}


class TensorBoardSink(Sink):
    """Scalars per step into event files under ``RUN_DIR/tensorboard``. The writer opens at the
    process start: a restart from step S purges what an earlier process logged after S (those
    steps are trained again), so TensorBoard shows one curve, not two overlapping."""

    def __init__(self, run: RunDir, job):
        self.folder = run.root / "tensorboard"
        self.writer = None

    def _open(self, resumed_at: int) -> None:
        from tensorboardX import SummaryWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.folder), purge_step=resumed_at + 1 if resumed_at else None,
                                    flush_secs=30)

    def on_event(self, name: str, fields: dict) -> None:
        if name == "process_start" and self.writer is None:
            self._open(int(fields.get("step") or 0))

    def on_step(self, record: dict) -> None:
        if self.writer is None:
            self._open(0)
        for key, value in _scalars(record).items():
            self.writer.add_scalar(f"train/{key}" if key != "val_loss" else "val/loss", value, record["step"])

    def on_summary(self, summary: dict) -> None:
        if self.writer is not None:
            self.writer.add_text("summary", "\n".join(f"{k}: {v}" for k, v in summary.items()),
                                 summary.get("final_step") or 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbSink(Sink):
    """A W&B run in offline mode under ``RUN_DIR/wandb``, one per process, all with the run's id
    (the run directory's name and a hash of its path), so ``wandb sync`` joins the restarts
    into one run. Its config is the resolved job."""

    def __init__(self, run: RunDir, job):
        import hashlib

        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        from hpcorch.spec.schema import to_dict

        run_id = f"{job.name}-{hashlib.sha256(str(run.root).encode()).hexdigest()[:8]}"
        self.run = wandb.init(mode="offline", dir=str(run.root), project=job.name, id=run_id, resume="allow",
                              config=to_dict(job), settings=wandb.Settings(console="off", x_disable_stats=True))

    def on_step(self, record: dict) -> None:
        self.run.log(_scalars(record), step=record["step"])

    def on_summary(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})

    def close(self) -> None:
        self.run.finish()
