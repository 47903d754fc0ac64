"""The training loop: DDP or FSDP2, accumulation, AdamW/Adafactor, warmup+cosine, checkpoints,
signal-driven stops at step boundaries, metrics and the run summary."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..spec.job import JobSpec
from .checkpoint import Checkpointer, CheckpointError
from .data import DataSource
from .distributed import DistEnv
from .model import GPT

RESUME_EXIT_CODE = 3  # checkpointed on a signal: start me again


@dataclass
class StopPolicy:
    """Which signals stop training at the next step boundary, and the exit code after the save.
    The submission layer sets these; the defaults suit ``hpcorch train``."""

    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
    exit_code: int = RESUME_EXIT_CODE


@dataclass
class RunState:
    step: int = 0
    consumed_samples: int = 0  # the global data cursor
    tokens: int = 0
    restarts: int = 0
    steps_recomputed: int = 0
    last_loss: float = float("nan")
    extra: dict = field(default_factory=dict)


def lr_at(step: int, opt, total_steps: int) -> float:
    """Linear warmup then cosine decay to ``min_lr``: a pure function of the step."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    span = max(1, total_steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    return opt.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (opt.lr - opt.min_lr)


def fingerprint(job: JobSpec) -> dict:
    """What must not change between a checkpoint and the run that resumes it."""
    tr = job.trainer
    return {"model": vars(tr.model), "global_batch": tr.global_batch,
            "seed": tr.seed, "data": {"source": tr.data.source, "path": tr.data.path,
                                      "val_fraction": tr.data.val_fraction, "max_bytes": tr.data.max_bytes},
            "optimizer": tr.optimizer.name, "sharding": tr.sharding}


def weights_digest(state: dict) -> str:
    """SHA-256 over the model parameters in sorted-name order (as float32 bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains ``job`` in ``run_dir`` on this rank; ``run()`` returns the process exit code."""

    def __init__(self, job: JobSpec, run_dir: Path, env: DistEnv, stop: StopPolicy | None = None,
                 peak_tflops: float | None = None, resume_step: int | None = None):
        self.job, self.tr, self.env = job, job.trainer, env
        self.run_dir = Path(run_dir)
        self.stop = stop or StopPolicy()
        self.peak_flops = (peak_tflops or 0) * 1e12
        self.resume_step = resume_step
        self.stop_signal = 0
        self.agreed_signal = 0
        self._saved_step = -1  # the step of the newest checkpoint this process knows of
        self.world = env.world_size
        if self.tr.global_batch % (self.tr.micro_batch * self.world):
            raise ConfigError(job.name, "trainer.global_batch", f"expected a multiple of micro_batch x "
                              f"world size = {self.tr.micro_batch} x {self.world}, got {self.tr.global_batch}")
        self.accum = self.tr.global_batch // (self.tr.micro_batch * self.world)
        ckpt_dir = Path(self.tr.checkpoint.dir) if self.tr.checkpoint.dir else self.run_dir / "checkpoints"
        self.ckpt = Checkpointer(ckpt_dir, env.rank, self.world, keep=self.tr.checkpoint.keep,
                                 async_save=self.tr.checkpoint.async_save,
                                 commit_timeout_s=self.tr.collective_timeout_s)
        self.cfg = self.tr.model
        self.precision = self._precision()
        self.state = RunState()

    # ----- setup ------------------------------------------------------------------------------
    def _precision(self) -> torch.dtype | None:
        want = self.tr.precision
        if want == "auto":
            want = "bf16" if self.env.device.type == "cuda" else "fp32"
        return torch.bfloat16 if want == "bf16" else None

    def _build(self) -> None:
        if "OMP_NUM_THREADS" not in os.environ:
            # The thread count changes CPU reduction order: pin it so that every launcher of
            # the same job computes the same numbers.
            torch.set_num_threads(self.job.resources.cpus_per_task)
        _seed_everything(self.tr.seed)  # same initial weights on every rank
        model = GPT(self.cfg, activation_checkpointing=self.tr.activation_checkpointing).to(self.env.device)
        self.raw_model = model
        if self.tr.sharding == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=self.precision, reduce_dtype=torch.float32) \
                if self.precision else MixedPrecisionPolicy()
            for block in model.blocks:
                fully_shard(block, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            self.model = model
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            self.model = DDP(model, device_ids=ids)
            self._register_compression()
        if self.tr.compile:
            self.model = torch.compile(self.model)
        self.optimizer = self._make_optimizer(model)
        self.data = DataSource(self.tr.data, self.cfg.seq_len, self.tr.seed)
        if self.tr.sharding == "ddp":
            self._settle_ddp_buckets()

    def _settle_ddp_buckets(self) -> None:
        """Run one zero-gradient backward so DDP rebuilds its buckets before the first real step.

        DDP all-reduces its first iteration with buckets in reverse parameter order and then
        rebuilds them in gradient-ready order. With more than two ranks, another bucket layout
        means another summation order, so a resumed process (whose first step is not the run's
        first) would drift from an uninterrupted one by rounding. After this, every real step of
        every process uses the rebuilt layout. Weights, optimizer and RNG state are untouched.
        """
        rng = _rng_state()
        _, x, y = self.data.val.batch(range(self.tr.micro_batch))
        with self._autocast():
            _, loss = self.model(x.to(self.env.device), y.to(self.env.device))
        (loss * 0.0).backward()
        self.optimizer.zero_grad(set_to_none=True)
        _set_rng_state(rng)

    def _register_compression(self) -> None:
        kind = self.tr.grad_compression
        if kind == "none":
            return
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        if kind in ("bf16", "powersgd") and self.env.backend != "nccl":
            # torch's bf16 hook refuses gloo; PowerSGD's chained collectives, issued from callback
            # threads, reach gloo in different orders on different ranks (a collective mismatch).
            raise ConfigError(self.job.name, "trainer.grad_compression",
                              f"{kind} compression needs NCCL on CUDA; use fp16 on CPU (gloo)")
        if kind == "powersgd":
            state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=2,
                                                start_powerSGD_iter=2, random_seed=self.tr.seed)
            self.model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        else:
            hook = default_hooks.fp16_compress_hook if kind == "fp16" else default_hooks.bf16_compress_hook
            self.model.register_comm_hook(None, hook)

    def _make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        opt = self.tr.optimizer
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": opt.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if opt.name == "adafactor":
            return torch.optim.Adafactor(groups, lr=opt.lr)
        fused = self.env.device.type == "cuda" and self.tr.sharding == "ddp"
        return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), fused=fused)

    # ----- state ------------------------------------------------------------------------------
    def _full_state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.raw_model, self.optimizer, options=opts)

    def save(self) -> float:
        model_sd, optim_sd = self._full_state()
        st = self.state
        shared = {"model": model_sd, "optimizer": optim_sd} if self.env.is_main else None
        local = {"rng": _rng_state()}
        meta = {"consumed_samples": st.consumed_samples, "tokens": st.tokens,
                "last_loss": st.last_loss, "fingerprint": fingerprint(self.job)}
        blocked = self.ckpt.save(st.step, shared, local, meta)
        self._saved_step = st.step
        return blocked

    def restore(self) -> bool:
        """Load the asked-for or latest committed checkpoint; False if starting fresh."""
        if self.resume_step is not None:
            if self.resume_step not in self.ckpt.committed_steps():
                raise CheckpointError(f"no committed checkpoint at step {self.resume_step} in "
                                      f"{self.ckpt.root} (committed: {self.ckpt.committed_steps() or 'none'})")
            found = (self.resume_step, *self.ckpt.load(self.resume_step))
        else:
            found = self.ckpt.load_latest(log=self.log)
        if found is None:
            return False
        step, shared, local, record = found
        self._check_fingerprint(record["fingerprint"])
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(self.raw_model, self.optimizer, model_state_dict=shared["model"],
                       optim_state_dict=shared["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        if local is not None:
            _set_rng_state(local["rng"])
        else:  # a rank that did not exist in the saved run: a fresh, rank- and step-specific seed
            _seed_everything(self.tr.seed + 1000003 * (self.env.rank + 1) + step)
        self.state.step = step
        self.state.consumed_samples = record["consumed_samples"]
        self.state.tokens = record["tokens"]
        self.state.last_loss = record["last_loss"]
        self._saved_step = step
        return True

    def _check_fingerprint(self, saved: dict) -> None:
        current = json.loads(json.dumps(fingerprint(self.job)))
        if saved != current:
            diffs = [f"{k}: checkpoint has {saved.get(k)!r}, job has {current.get(k)!r}"
                     for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
            raise CheckpointError("the checkpoint does not match this job's config (" + "; ".join(diffs)
                                  + "). Use another --run-dir or checkpoint.dir to start afresh.")

    # ----- progress book-keeping (rank 0) ------------------------------------------------------
    def _progress_path(self) -> Path:
        return self.run_dir / "progress.json"

    def _account_restart(self, resumed: bool) -> None:
        """Restarts and steps recomputed survive crashes: the furthest step reached is on disk."""
        path = self._progress_path()
        prior = json.loads(path.read_text()) if path.exists() else None
        if prior is not None:
            self.state.restarts = prior["restarts"] + 1
            self.state.steps_recomputed = prior["steps_recomputed"] + max(0, prior["step"] - self.state.step)
        elif resumed:
            self.state.restarts = 1

    def _write_progress(self) -> None:
        st = self.state
        tmp = self._progress_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": st.step, "restarts": st.restarts,
                                   "steps_recomputed": st.steps_recomputed, "loss": st.last_loss}))
        os.replace(tmp, self._progress_path())

    def log(self, message: str) -> None:
        if self.env.is_main:
            print(message, flush=True)

    # ----- the loop ---------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum  # only a flag: ranks agree at the next step boundary
        self.signal_time = time.time()

    def event(self, name: str, **fields) -> None:
        """Rank 0 appends timestamped events (start, first step, signal, checkpoint) to
        ``events.jsonl``: when a run was stopped and how long it took to come back."""
        if self.env.is_main:
            with open(self.run_dir / "events.jsonl", "a") as f:
                f.write(json.dumps({"event": name, "time": time.time(), **fields}) + "\n")

    def _sync_context(self, last_micro: bool):
        if last_micro:
            return contextlib.nullcontext()
        if self.tr.sharding == "fsdp":
            return _FSDPNoSync(self.raw_model)
        return self.model.no_sync()

    def _autocast(self):
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.precision)

    def train_step(self) -> tuple[float, float, list[int]]:
        tr, st = self.tr, self.state
        lr = lr_at(st.step, tr.optimizer, tr.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        positions = self.data.rank_positions(st.consumed_samples, tr.global_batch, self.env.rank, self.world)
        loss_sum = torch.zeros((), device=self.env.device)
        seen: list[int] = []
        for k in range(self.accum):
            ids, x, y = self.data.train.batch(positions[k * tr.micro_batch:(k + 1) * tr.micro_batch])
            seen += ids
            x, y = x.to(self.env.device, non_blocking=True), y.to(self.env.device, non_blocking=True)
            with self._sync_context(k == self.accum - 1), self._autocast():
                _, loss = self.model(x, y)
            (loss / self.accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.optimizer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # One small all-reduce carries the loss and the stop flag: ranks agree on both.
        flags = torch.stack([loss_sum / self.accum, torch.tensor(float(self.stop_signal), device=self.env.device)])
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        st.last_loss = flags[0].item() / self.world
        self._stop_agreed = flags[1].item() > 0
        if self._stop_agreed:  # which signal: the submission layer acts on it (requeue or stop)
            agreed = torch.tensor(float(self.stop_signal), device=self.env.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            self.agreed_signal = int(agreed.item())
        st.step += 1
        st.consumed_samples += tr.global_batch
        st.tokens += tr.global_batch * self.cfg.seq_len
        return lr, float(grad_norm), seen

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        total = torch.zeros((), device=self.env.device)
        for b in range(self.tr.eval_batches):
            start = (b * self.world + self.env.rank) * self.tr.micro_batch
            _, x, y = self.data.val.batch(range(start, start + self.tr.micro_batch))
            with self._autocast():
                _, loss = self.model(x.to(self.env.device), y.to(self.env.device))
            total += loss.float()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.model.train()
        return total.item() / (self.tr.eval_batches * self.world)

    def run(self) -> int:
        for signum in self.stop.signals:
            signal.signal(signum, self._on_signal)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._build()
        resumed = self.restore()
        if self.env.is_main:
            self._account_restart(resumed)
            self._write_progress()
            self.log(f"hpcorch: {'resumed at step ' + str(self.state.step) if resumed else 'starting'}; "
                     f"{self.cfg.num_params() / 1e6:.2f}M parameters, world {self.world}, "
                     f"accumulation {self.accum}, {self.env.backend} on {self.env.device.type}")
        import psutil

        self.event("process_start", time=psutil.Process().create_time(), step=self.state.step,
                   restarts=self.state.restarts)
        metrics = open(self.run_dir / "metrics.jsonl", "a") if self.env.is_main else None
        trace = self._open_trace()
        flops_per_step = self.cfg.flops_per_token() * self.tr.global_batch * self.cfg.seq_len
        self.model.train()
        self._stop_agreed = False
        first_step = True
        try:
            while self.state.step < self.tr.steps and not self._stop_agreed:
                t0 = time.perf_counter()
                lr, grad_norm, seen = self.train_step()
                if self.env.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                st = self.state
                if first_step:
                    self.event("first_step", step=st.step)
                    first_step = False
                if trace:
                    trace.write(json.dumps({"step": st.step, "rank": self.env.rank, "samples": seen}) + "\n")
                record = {"step": st.step, "loss": st.last_loss, "lr": lr, "grad_norm": grad_norm,
                          "step_time_s": dt, "tokens_per_s": self.tr.global_batch * self.cfg.seq_len / dt,
                          "mfu": flops_per_step / dt / (self.peak_flops * self.world) if self.peak_flops else None,
                          "max_mem_mb": _max_memory_mb(self.env.device)}
                if self.tr.eval_interval and st.step % self.tr.eval_interval == 0:
                    record["val_loss"] = self.evaluate()
                if metrics:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    self._write_progress()
                    if st.step % self.tr.log_interval == 0 or st.step == 1:
                        mfu = f" mfu {record['mfu'] * 100:.1f}%" if record["mfu"] else ""
                        self.log(f"step {st.step:>6}/{self.tr.steps} loss {st.last_loss:.4f} lr {lr:.2e} "
                                 f"{record['tokens_per_s']:,.0f} tok/s{mfu}")
                if st.step % self.tr.checkpoint.interval == 0 or st.step == self.tr.steps:
                    self.save()
            if self._stop_agreed:
                if self._saved_step != self.state.step:
                    self.save()
                self.ckpt.wait()
                self.event("signal", signal=self.agreed_signal,
                           time=getattr(self, "signal_time", time.time()), step=self.state.step)
                self.event("checkpoint_committed", step=self.state.step)
                self.log(f"hpcorch: stopped by signal {signal.Signals(self.agreed_signal).name} "
                         f"at step {self.state.step}; checkpoint committed, exit {self.stop.exit_code}")
                return self.stop.exit_code
            self.ckpt.wait()
            self._finish()
            return 0
        finally:
            if metrics:
                metrics.close()
            if trace:
                trace.close()

    def _open_trace(self):
        """``HPCORCH_SAMPLE_TRACE=DIR``: each rank logs the sample ids it trained on (tests)."""
        folder = os.environ.get("HPCORCH_SAMPLE_TRACE")
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        return open(Path(folder) / f"rank{self.env.rank}.jsonl", "a")

    def _finish(self) -> None:
        val_loss = self.evaluate()
        model_sd, _ = self._full_state()
        if not self.env.is_main:
            return
        st = self.state
        summary = {"job": self.job.name, "final_step": st.step, "final_loss": st.last_loss,
                   "val_loss": val_loss, "tokens": st.tokens, "restarts": st.restarts,
                   "steps_recomputed": st.steps_recomputed, "world_size": self.world,
                   "weights_sha256": weights_digest(model_sd)}
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.run_dir / "summary.json")
        self.log(f"hpcorch: done at step {st.step}, loss {st.last_loss:.4f}, val {val_loss:.4f}, "
                 f"weights {summary['weights_sha256'][:16]}")


class _FSDPNoSync:
    """FSDP2's counterpart of DDP's no_sync(): skip the reduce-scatter on non-final micro-steps."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.model.set_requires_gradient_sync(False)

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)


def _max_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

