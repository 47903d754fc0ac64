"""The training loop of one rank, as a sequence of calls to its components: the parallel model
(:mod:`.parallel`), the optimizer and LR schedule (:mod:`.optim`), the data (:mod:`.data`), the
checkpointer (:mod:`.checkpoint`), the stop agreement (:mod:`.stop`) and the run logger
(:mod:`.runlog`). The rules that keep it bit-exact across restarts are in :mod:`.determinism`.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hpcorch import protocol
from hpcorch.errors import ConfigError
from hpcorch.spec.job import JobSpec
from hpcorch.state.rundir import CheckpointLayout, RunDir
from hpcorch.train.checkpoint.checkpointer import Checkpointer, checkpoint_group, model_digest
from hpcorch.train.checkpoint.hf import HFFolderError, init_state
from hpcorch.train.checkpoint.store import CheckpointStore
from hpcorch.train.data import DataSource
from hpcorch.train.determinism import pin_threads
from hpcorch.train.distributed import DistEnv, first_to_fail, gather_objects, node_first
from hpcorch.train.faults import SampleTrace, after_step, drop_grad
from hpcorch.train.models import spec_of
from hpcorch.train.optim import lr_at
from hpcorch.train.parallelize.build import build_parallel_model, resolve_layout
from hpcorch.train.prefetch import StepBatches
from hpcorch.train.runlog import RunLogger, Sink, placement_record
from hpcorch.train.sinks import build_sinks
from hpcorch.train.startup import StartupClock
from hpcorch.train.state import TrainState
from hpcorch.train.stop import StopAgreement
from hpcorch.train.tokencache import TokenCache


class Trainer:
    """Trains ``job`` in ``run_dir`` on this rank. Building happens here, after the stop
    signals are caught (a signal during a slow build still ends in a clean stop); :meth:`run`
    restores, trains and saves. ``sinks`` are more destinations for rank 0's reports."""

    def __init__(self, job: JobSpec, run_dir: str | Path, env: DistEnv, stop_signals: tuple[int, ...],
                 peak_tflops: float | None = None, resume_step: int | None = None,
                 sinks: tuple[Sink, ...] = (), clock: StartupClock | None = None):
        tr = job.trainer
        self.clock = clock or StartupClock()
        self.job, self.tr, self.env, self.world = job, tr, env, env.world_size
        self.layout = resolve_layout(job, self.world)
        self.accum = self.layout.accumulation
        self.dp_rank = self.layout.dp_rank(env.rank)  # which share of each batch this rank reads
        # One rank per data-parallel share traces its samples (tp and pp peers read the same).
        coords = self.layout.coords(env.rank)
        self.traces_samples = coords["tp"] == 0 and coords["pp"] == 0
        self.resume_step = resume_step
        self.peak_flops = (peak_tflops or 0) * 1e12
        self.tokens_per_step = tr.global_batch * tr.model.seq_len
        self.flops_per_step = spec_of(tr.model).shapes.flops_per_token(tr.model) * self.tokens_per_step
        self.state = TrainState()
        self.stop = StopAgreement(stop_signals, env.device, self.world)
        self.stop.install()
        self.run_dir = RunDir.for_job(run_dir, job)
        self.run_dir.root.mkdir(parents=True, exist_ok=True)

        # Build in the order the determinism rules need: threads, seed + model, optimizer,
        # data, then DDP's settling backward (which needs a batch and the optimizer's params).
        pin_threads(job.resources.cpus_per_task)
        initial = self._init_from()
        self.parallel = build_parallel_model(job, env, initial)  # with its optimizers, one per part
        self.initialised_from = initial is not None
        del initial  # the whole model's weights, copied into the parts: not kept twice
        self.clock.mark("model")
        # Text is tokenized once per node into the user's token cache, then mapped by all.
        cache = TokenCache()
        self.data = node_first(lambda: DataSource(tr.data, tr.model.seq_len, tr.seed, job=job.name, cache=cache,
                                                          vocab=tr.model.vocab),
                               env.local_rank, env.device)
        self.clock.mark("data")
        _, x, y = self.data.val.batch(range(tr.micro_batch))
        self.parallel.settle(x, y)
        self.clock.mark("settle")
        # The next step's batches are built in a background thread (the same samples, in order).
        self.batches = StepBatches(self.data.train, self.dp_rank, self.layout.dp, tr.global_batch,
                                   self.layout.micro_batch, env.device)

        if env.is_main and tr.loggers:  # TensorBoard, W&B (offline)
            sinks = (*sinks, *build_sinks(job, self.run_dir))
        self.runlog = RunLogger(self.run_dir, self.state, env.is_main, tr.steps, tr.log_interval, sinks)
        store = CheckpointStore(self.run_dir.checkpoints, env.rank, self.world, keep=tr.checkpoint.keep,
                                async_save=tr.checkpoint.async_save,
                                commit_timeout_s=tr.collective_timeout_s, fence=self.run_dir.check_fence,
                                agree=lambda ok, own=True: first_to_fail(ok, env.rank, env.device, own),
                                group=checkpoint_group(tr.collective_timeout_s))
        self.checkpointer = Checkpointer(store, job, env.rank, self.parallel.parts, self.parallel.optimizers,
                                         log=self.runlog.info, accepted_config=self.run_dir.accepted_config())
        self.trace = SampleTrace(env.rank)
        self.after_step = after_step(env.rank)
        self.steps_this_process = 0
        self.clock.mark("setup")

    def _init_from(self) -> dict | None:
        """``trainer.init_from``'s weights at a run's first start (no committed checkpoint; a
        resume restores its own), read by every rank alike; None otherwise."""
        if self.tr.init_from is None or CheckpointLayout(self.run_dir.checkpoints).committed_steps():
            return None
        try:
            return init_state(Path(self.tr.init_from).expanduser(), self.tr.model, spec_of(self.tr.model))
        except HFFolderError as exc:
            raise ConfigError(self.job.name, "trainer.init_from", str(exc)) from None

    @property
    def agreed_signal(self) -> int:
        """The signal the ranks agreed to stop on (0 if none)."""
        return self.stop.agreed_signal

    # ----- the run ----------------------------------------------------------------------------
    def run(self) -> int:
        """Train until ``trainer.steps`` or an agreed stop. Returns :data:`protocol.DONE` or,
        after a committed checkpoint on a signal, :data:`protocol.CHECKPOINTED`."""
        try:
            resumed = self.checkpointer.restore(self.state, self.resume_step)
            self.clock.mark("restore")
            self.runlog.start(resumed, self._setup_line())
            if self.initialised_from:
                self.runlog.info(f"hpcorch: initialised the weights from {self.tr.init_from} (trainer.init_from)")
            # Where every rank landed (node, Slurm's topology address), for `hpcorch status`.
            self.runlog.placement(gather_objects(placement_record(self.env.rank, self.env.local_rank)))
            self._record_config_change()
            self.parallel.train()
            self.clock.mark("records")
            while self.state.step < self.tr.steps and not self.stop.agreed:
                self.runlog.step(self._timed_step())
                if self._checkpoint_due():
                    self._save()
            if self.stop.agreed:
                return self._stop()
            self._wait_for_save()
            self._finish()
            return protocol.DONE
        finally:
            self.batches.close()
            self.runlog.close()
            self.trace.close()

    def _record_config_change(self) -> None:
        """The run goes on under a config the user accepted over the checkpoint's: say so, and
        keep the differences in the events (the next checkpoint records the new config)."""
        changes = self.checkpointer.config_changes
        if changes:
            self.runlog.event("config_change", step=self.state.step, changes=changes)
            self.runlog.info(f"hpcorch: continuing step {self.state.step}'s checkpoint under a changed "
                             f"config (accepted): {', '.join(changes)}")

    def _setup_line(self) -> str:
        env = self.env
        return (f"{spec_of(self.tr.model).shapes.num_params(self.tr.model) / 1e6:.2f}M parameters, world {self.world}, "
                f"layout {self.layout.describe()}, accumulation {self.accum}, {env.backend} on {env.device.type}")

    def _save(self) -> None:
        """Checkpoint this step and record how long training was blocked (the whole save when
        synchronous; when asynchronous, the wait for the previous save and the copy to host
        memory): goodput's checkpoint bucket and the planner's measured save time."""
        start = time.perf_counter()  # the whole call: an async save first waits for the one before
        self.checkpointer.save(self.state)
        self.runlog.event("checkpoint_save", step=self.state.step, blocking_s=time.perf_counter() - start)

    def _wait_for_save(self) -> None:
        """Wait for an asynchronous save still in flight; the wait blocked training too (a
        synchronous save has nothing left to wait for, and records nothing)."""
        start = time.perf_counter()
        self.checkpointer.wait()
        if self.checkpointer.store.async_save:
            self.runlog.event("checkpoint_wait", step=self.state.step, blocking_s=time.perf_counter() - start)

    def _checkpoint_due(self) -> bool:
        step = self.state.step
        return step % self.tr.checkpoint.interval == 0 or step == self.tr.steps

    def _timed_step(self) -> dict:
        """One step, traced, measured and (on evaluation steps) evaluated: its metrics record."""
        start = time.perf_counter()
        lr, grad_norm, seen = self.train_step()
        if self.env.device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels are done: honest timings
        st = self.state
        self.after_step(st.step)  # a test's slower machine (HPCORCH_STEP_DELAY_S) is part of the step
        dt = time.perf_counter() - start
        self.steps_this_process += 1
        if self.steps_this_process == 1:
            self.clock.mark("first_step")
            self.runlog.event("first_step", step=st.step, startup_s=self.clock.phases())
        self.trace.write(st.step, seen)
        record = {"step": st.step, "time": time.time(), "loss": st.last_loss, "lr": lr, "grad_norm": grad_norm,
                  "step_time_s": dt, "tokens_per_s": self.tokens_per_step / dt,
                  "mfu": self.flops_per_step / dt / (self.peak_flops * self.world) if self.peak_flops else None,
                  "max_mem_mb": max_memory_mb(self.env.device)}
        if self.tr.eval_interval and st.step % self.tr.eval_interval == 0:
            start = time.perf_counter()
            record["val_loss"] = self.evaluate()
            record["eval_s"] = time.perf_counter() - start  # after the step's "time": goodput's eval bucket
        return record

    def train_step(self) -> tuple[float, float, list[int]]:
        """One optimizer step over this rank's share of the global batch. Returns the LR, the
        gradient norm before clipping and the sample ids this rank trained on."""
        tr, st = self.tr, self.state
        lr = lr_at(st.step, tr.optimizer, tr.steps)
        self.parallel.set_lr(lr)
        batches, seen = [], []
        for ids, x, y in self.batches.get(st.consumed_samples):
            seen += ids
            batches.append((x, y))
        loss = self.parallel.forward_backward(batches)
        drop_grad(self.parallel.parts, self.env.rank)  # a test's fault, off unless asked for
        grad_norm = self.parallel.clip_grad_norm(tr.optimizer.grad_clip)
        self.parallel.optimizer_step()
        st.last_loss = self.stop.reduce_loss(loss, self.parallel.loss_weight)  # also agrees on a stop
        st.advance(tr.global_batch, tr.model.seq_len)
        return lr, float(grad_norm), seen if self.traces_samples else []

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over ``eval_batches`` batches per data-parallel rank (a
        collective). A batch is a micro-batch, or under pp a step's share (the schedule splits
        it into the micro-batches its stages were built for)."""
        tr, dp = self.tr, self.layout.dp
        rows = self.layout.micro_batch * self.accum if self.parallel.pipeline is not None else tr.micro_batch
        self.parallel.train(False)
        total = torch.zeros((), device=self.env.device)
        for b in range(tr.eval_batches):
            start = (b * dp + self.dp_rank) * rows
            _, x, y = self.data.val.batch(range(start, start + rows))
            total += self.parallel.eval_loss(x, y).float()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # loss weights: the sum over the world / world
        self.parallel.train()
        return total.item() / (tr.eval_batches * self.world)

    def _stop(self) -> int:
        """After an agreed stop: make sure this step is committed, then report it."""
        st = self.state
        if self.checkpointer.saved_step != st.step:
            self._save()
        self._wait_for_save()
        signal_time = self.stop.signal_time if self.stop.signal_time is not None else time.time()
        self.runlog.event("signal", signal=self.agreed_signal, time=signal_time, step=st.step)
        self.runlog.event("checkpoint_committed", step=st.step)
        self.runlog.info(f"hpcorch: stopped by signal {signal.Signals(self.agreed_signal).name} "
                         f"at step {st.step}; checkpoint committed, exit {protocol.CHECKPOINTED}")
        if self.env.rank != 0:  # rank 0 may still requeue the job: a SIGTERM then must not end it
            self.stop.committed()
        return protocol.CHECKPOINTED

    def _finish(self) -> None:
        """Evaluate, digest the weights and write the summary."""
        start = time.perf_counter()
        val_loss = self.evaluate()
        self.runlog.event("final_eval", step=self.state.step, eval_s=time.perf_counter() - start)
        digest = model_digest(self.checkpointer.parts, self.checkpointer.tied)  # a collective: every rank
        if not self.env.is_main:
            return
        st = self.state
        self.runlog.summary({"job": self.job.name, "final_step": st.step, "final_loss": st.last_loss,
                             "val_loss": val_loss, "tokens": st.tokens, "restarts": st.restarts,
                             "steps_recomputed": st.steps_recomputed, "world_size": self.world,
                             "weights_sha256": digest})


def max_memory_mb(device: torch.device) -> float:
    """Peak memory of this rank: allocated on the GPU, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
