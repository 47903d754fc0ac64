"""What a run reports, and where it goes: per-step metrics, events, progress, the summary and
the console lines, each written by a :class:`Sink`.

Only rank 0 reports (the other ranks' :class:`RunLogger` has no sinks). File names come from
:class:`hpcorch.state.rundir.RunDir`. A new destination (TensorBoard, W&B) is one more sink passed
to :class:`RunLogger`; the trainer does not change.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable

from hpcorch.state.rundir import RunDir
from hpcorch.train.state import TrainState
from hpcorch.util.diskspace import DiskFull
from hpcorch.util.display import duration
from hpcorch.util.fileio import atomic_write

log = logging.getLogger("hpcorch.train")


class Sink:
    """A destination of a run's reports. Every method is optional (the default ignores it)."""

    def on_step(self, record: dict) -> None:
        """One finished step: step, time, loss, lr, grad_norm, step_time_s, tokens_per_s, mfu,
        max_mem_mb and, on evaluation steps, val_loss and eval_s."""

    def on_event(self, name: str, fields: dict) -> None:
        """Something that happened once: process_start, config_change, first_step, signal,
        checkpoint_save / checkpoint_wait (``blocking_s``), checkpoint_committed, final_eval
        (``eval_s``)."""

    def on_summary(self, summary: dict) -> None:
        """The completed run's summary."""

    def close(self) -> None:
        """Release files or connections; no calls follow."""


class MetricsFile(Sink):
    """``metrics.jsonl``: one JSON line per step, flushed at once (``hpcorch logs`` follows it)."""

    def __init__(self, run: RunDir):
        self._file = open(run.metrics, "a")  # noqa: SIM115 (kept open for the sink's lifetime; close() ends it)

    def on_step(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class EventsFile(Sink):
    """``events.jsonl``: timestamped events (when a run stopped, how long it took to come back,
    an accepted config change). Each is fsynced: events are few, and some are the run's only
    record of a decision (the config it continued under)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_event(self, name: str, fields: dict) -> None:
        self.run.append_event(name, durable=True, **fields)


class ProgressFile(Sink):
    """``progress.json``: the furthest step, restarts, steps recomputed and the last loss.
    Rewritten every step, so not fsynced: a crash of the process never loses it."""

    def __init__(self, run: RunDir, state: TrainState):
        self.path, self.state = run.progress_file, state
        self.job, self.attempt = slurm_attempt()

    def write(self) -> None:
        st = self.state
        atomic_write(self.path, json.dumps({"step": st.step, "restarts": st.restarts,
                                            "steps_recomputed": st.steps_recomputed,
                                            "loss": st.last_loss, "job": self.job, "attempt": self.attempt}),
                     durable=False)

    def on_step(self, record: dict) -> None:
        self.write()


class SummaryFile(Sink):
    """``summary.json``, written once (durably) when the run completes."""

    def __init__(self, run: RunDir):
        self.path = run.summary_file

    def on_summary(self, summary: dict) -> None:
        atomic_write(self.path, json.dumps(summary, indent=2) + "\n")


class Console(Sink):
    """Human-readable lines through the ``hpcorch.train`` logger (the rank's stdout): every
    ``log_interval`` steps, the step and the share done, loss, LR, tokens/s, MFU, the time
    this process has trained and the ETA.

    The ETA is the steps left times the wall time per step over the last :data:`ETA_WINDOW`
    steps (checkpoints and evaluations included: they recur, so they belong in the rate);
    before two steps are seen, the step's own time."""

    ETA_WINDOW = 50

    def __init__(self, total_steps: int, log_interval: int):
        self.total_steps, self.log_interval = total_steps, log_interval
        self._recent: deque[tuple[int, float]] = deque(maxlen=self.ETA_WINDOW + 1)
        self._started: float | None = None

    def on_step(self, record: dict) -> None:
        step, now = record["step"], record.get("time") or time.time()
        if self._started is None:
            self._started = now - record["step_time_s"]  # when this process's first step began
        self._recent.append((step, now))
        if step % self.log_interval and step != 1:
            return
        mfu = f" mfu {record['mfu'] * 100:.1f}%" if record["mfu"] else ""
        done = step / self.total_steps if self.total_steps else 1.0
        log.info(f"step {step:>6}/{self.total_steps} ({done * 100:.1f}%) loss {record['loss']:.4f} "
                 f"lr {record['lr']:.2e} {record['tokens_per_s']:,.0f} tok/s{mfu}; "
                 f"{duration(now - self._started)} elapsed, ETA {self._eta(step, record['step_time_s'])}")

    def _eta(self, step: int, step_time_s: float) -> str:
        left = max(0, self.total_steps - step)
        (first_step, first_time), (last_step, last_time) = self._recent[0], self._recent[-1]
        per_step = (last_time - first_time) / (last_step - first_step) if last_step > first_step else step_time_s
        return duration(left * per_step)

    def on_summary(self, summary: dict) -> None:
        log.info(f"hpcorch: done at step {summary['final_step']}, loss {summary['final_loss']:.4f}, "
                 f"val {summary['val_loss']:.4f}, weights {(summary['weights_sha256'] or 'n/a')[:16]}")


def slurm_attempt() -> tuple[str | None, int]:
    """This process's Slurm job id (None outside Slurm) and attempt (Slurm's restart count)."""
    import os

    try:
        attempt = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        attempt = 0
    return os.environ.get("SLURM_JOB_ID") or None, attempt


def placement_record(rank: int, local_rank: int) -> dict:
    """Where this rank runs: its node (Slurm's name for it, else the host name), Slurm's
    topology address (``spine.leaf1.node1``; None outside Slurm or without a topology plugin)
    and the attempt (Slurm's restart count)."""
    import os
    import socket

    _, attempt = slurm_attempt()
    return {"rank": rank, "local_rank": local_rank,
            "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            "topology_addr": os.environ.get("SLURM_TOPOLOGY_ADDR") or None, "attempt": attempt}


class RunLogger:
    """Rank 0's reports of one run, fanned out to sinks; on other ranks every call is a no-op.

    ``progress.json`` also carries the restart accounting: the furthest step any process of
    the run reached survives crashes there, so a restart knows how many steps it recomputes.
    """

    def __init__(self, run: RunDir, state: TrainState, is_main: bool, total_steps: int,
                 log_interval: int, extra_sinks: tuple[Sink, ...] = ()):
        self.run, self.state, self.is_main = run, state, is_main
        self.progress = ProgressFile(run, state)
        self.sinks: list[Sink] = []
        self._warned: set = set()
        if is_main:
            # The order matters to readers: progress.json announces a step (tests signal on
            # it) only after metrics.jsonl holds it, and the console's last line only after
            # summary.json exists.
            self.sinks = [MetricsFile(run), self.progress, EventsFile(run), SummaryFile(run),
                          Console(total_steps, log_interval), *extra_sinks]

    def info(self, message: str) -> None:
        """A console line (rank 0 only)."""
        if self.is_main:
            log.info(message)

    def start(self, resumed: bool, setup: str) -> None:
        """Account a restart, write the first progress, say how the run starts and record
        the process start."""
        if not self.is_main:
            return
        self._account_restart(resumed)
        self._tolerate_full_disk(self.progress, self.progress.write)
        st = self.state
        self.info(f"hpcorch: {'resumed at step ' + str(st.step) if resumed else 'starting'}; {setup}")
        from hpcorch.train.startup import process_start_time

        # The process's real start time: the restart took from the stop event until then.
        self.event("process_start", time=process_start_time(), step=st.step, restarts=st.restarts,
                   steps_recomputed=st.steps_recomputed)

    def _account_restart(self, resumed: bool) -> None:
        """Restarts and steps recomputed: an earlier process of this run left progress.json.
        Attempts of a Slurm job that ended before they got here (a preemption in their first
        seconds) left nothing, but Slurm counted them: they are restarts too, as
        ``restarts.json`` counts their requeues."""
        prior = self.run.progress()
        job, attempt = self.progress.job, self.progress.attempt
        if prior:
            same_job = job is not None and prior.get("job") == job
            unseen = attempt - int(prior.get("attempt") or 0) - 1 if same_job else attempt
            self.state.restarts = prior["restarts"] + 1 + max(0, unseen)
            self.state.steps_recomputed = prior["steps_recomputed"] + max(0, prior["step"] - self.state.step)
        else:
            self.state.restarts = max(attempt, 1 if resumed else 0)

    def placement(self, records: list[dict]) -> None:
        """Every rank's :func:`placement_record` (gathered by the caller), as one ``placement``
        event each, written together after ``process_start`` (``hpcorch status`` reads the ones
        after the last start)."""
        events = next((s for s in self.sinks if isinstance(s, EventsFile)), None)
        if events is not None:
            self._tolerate_full_disk(events, self.run.append_events, "placement", records, True)

    def step(self, record: dict) -> None:
        for sink in self.sinks:
            self._tolerate_full_disk(sink, sink.on_step, record)

    def event(self, name: str, **fields) -> None:
        for sink in self.sinks:
            self._tolerate_full_disk(sink, sink.on_event, name, fields)

    def _tolerate_full_disk(self, sink: Sink, report: Callable, *args) -> None:
        """A full disk under metrics, progress or events costs those lines, not the run: only
        rank 0 writes them, and dying here would leave the other ranks in a collective with a
        gloo traceback. One warning per sink; the next checkpoint save stops all ranks
        together, with one line, if the space does not come back."""
        try:
            report(*args)
        except OSError as exc:
            if not DiskFull.applies(exc):
                raise
            if sink not in self._warned:
                self._warned.add(sink)
                log.warning("warning: %s; training goes on without these records",
                            DiskFull(exc.filename or self.run.root, exc))

    def summary(self, summary: dict) -> None:
        for sink in self.sinks:
            sink.on_summary(summary)

    def close(self) -> None:
        for sink in self.sinks:
            self._tolerate_full_disk(sink, sink.close)  # a buffered line may still need space
        self.sinks = []
