"""What :func:`hpcorch.runtime.report` and :func:`~hpcorch.runtime.checkpoint_committed` write:
the same files, in the same shapes, as the trainer's :mod:`hpcorch.train.runlog` (metrics.jsonl,
progress.json, events.jsonl), read by :mod:`hpcorch.observe` without knowing who wrote them."""
from __future__ import annotations

import json
import logging
import os
import time

from hpcorch.state.rundir import RunDir
from hpcorch.util.display import duration
from hpcorch.util.fileio import atomic_write

log = logging.getLogger("hpcorch.runtime")


class Reporter:
    """Rank 0's step records for one process of a program."""

    def __init__(self, root: str, started: float):
        self.run = RunDir(root)
        self.prior = self.run.progress()
        self.restarts = self.prior.get("restarts", -1) + 1 if self.prior else 0
        self.recomputed = self.prior.get("steps_recomputed", 0)
        self.last: float | None = None
        self.started = started
        self.planned = int(os.environ.get("HPCORCH_STEPS") or 0) or None
        self._metrics = None

    def step(self, step: int, loss: float | None, tokens: int | None, extra: dict) -> None:
        now = time.time()
        if self.last is None:  # this process's first step: how many it trains again
            if self.prior:
                self.recomputed += max(0, self.prior.get("step", 0) - (step - 1))
            self.run.append_event("first_step", durable=True, step=step)
        dt = now - (self.last or self.started)
        self.last = now
        record = {"step": step, "time": now, "loss": loss, "step_time_s": dt,
                  "tokens_per_s": tokens / dt if tokens and dt > 0 else None, "mfu": None, **extra}
        if self._metrics is None:
            self._metrics = open(self.run.metrics, "a")  # noqa: SIM115 (kept open: one line per step)
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        # progress.json after metrics.jsonl holds the step, as the trainer orders them
        atomic_write(self.run.progress_file, json.dumps({"step": step, "restarts": self.restarts,
                                                         "steps_recomputed": self.recomputed, "loss": loss}),
                     durable=False)
        if self.planned and (step % max(1, self.planned // 20) == 0 or step == 1):
            log.info("step %d/%d loss %s; %s elapsed", step, self.planned,
                     "n/a" if loss is None else f"{loss:.4f}", duration(now - self.started))


def commit(root: str, step: int, path: str | None) -> None:
    """Record the program's latest complete checkpoint (atomically: never a half-written record)."""
    run = RunDir(root)
    atomic_write(run.program_checkpoint_file, json.dumps({"step": step, "path": path, "time": time.time()}))
    run.append_event("checkpoint_committed", durable=True, step=step, path=path)
