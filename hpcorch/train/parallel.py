"""Building the model and laying it out over the ranks: seed, GPT, then DDP or FSDP2, gradient
compression, ``torch.compile``, mixed precision, and the no-sync context for accumulation.

The layout is chosen in one place, :data:`LAYOUTS`, keyed by ``trainer.sharding``; a new
layout (tensor or pipeline parallelism) is one more entry returning a :class:`Wrapped`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..spec.job import JobSpec
from .determinism import rng_state, seed_everything, set_rng_state
from .distributed import DistEnv
from .model import GPT


@dataclass(frozen=True)
class Wrapped:
    """What a layout makes of the raw model."""

    model: nn.Module                            # runs forward and backward
    no_sync: Callable[[], ContextManager]       # skips the gradient reduction of a micro-step
    settle_buckets: bool = False                # see ParallelModel.settle


@dataclass
class ParallelModel:
    """The model of this rank: ``module`` is the raw GPT (state dicts, optimizer parameters),
    ``model`` the wrapped one that training runs through."""

    module: GPT
    model: nn.Module
    device: torch.device
    precision: torch.dtype | None
    wrapped: Wrapped

    def no_sync(self, last_micro: bool) -> ContextManager:
        """Reduce gradients only on the last micro-step of an accumulated step."""
        return contextlib.nullcontext() if last_micro else self.wrapped.no_sync()

    def autocast(self) -> ContextManager:
        """Autocast to the training precision (nothing in fp32)."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def settle(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run one zero-gradient backward so DDP rebuilds its buckets before the first real
        step (determinism rule 4 in :mod:`hpcorch.train.determinism`). Weights, gradients,
        optimizer and RNG state are left as they were. Nothing to do for other layouts."""
        if not self.wrapped.settle_buckets:
            return
        saved = rng_state()
        with self.autocast():
            _, loss = self.model(x.to(self.device), y.to(self.device))
        (loss * 0.0).backward()
        self.module.zero_grad(set_to_none=True)
        set_rng_state(saved)


def resolve_precision(want: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.precision``; None means fp32 (no autocast)."""
    if want == "auto":
        want = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if want == "bf16" else None


def build_parallel_model(job: JobSpec, env: DistEnv) -> ParallelModel:
    """Seed, build the GPT on this rank's device, lay it out and (optionally) compile it."""
    tr = job.trainer
    precision = resolve_precision(tr.precision, env.device)
    seed_everything(tr.seed)  # the same initial weights on every rank (determinism rule 2)
    module = GPT(tr.model, activation_checkpointing=tr.activation_checkpointing).to(env.device)
    wrapped = LAYOUTS[tr.sharding](module, job, env, precision)
    model = torch.compile(wrapped.model) if tr.compile else wrapped.model
    return ParallelModel(module, model, env.device, precision, wrapped)


def wrap_ddp(module: GPT, job: JobSpec, env: DistEnv, precision: torch.dtype | None) -> Wrapped:
    """Replicate the model; gradients are all-reduced (optionally compressed) in buckets.
    One rank without compression needs no reduction: DDP would copy every gradient into a
    bucket, all-reduce it with itself on gloo's thread and copy it back, the same numbers at
    ~2% of a small model's step, so the plain module trains."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if env.world_size == 1 and job.trainer.grad_compression == "none":
        return Wrapped(module, contextlib.nullcontext)

    ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = DDP(module, device_ids=ids)
    register_compression(ddp, job, env.backend)
    return Wrapped(ddp, ddp.no_sync, settle_buckets=True)


def wrap_fsdp(module: GPT, job: JobSpec, env: DistEnv, precision: torch.dtype | None) -> Wrapped:
    """Shard parameters with FSDP2: each block is its own unit, then the root (embeddings,
    final norm, head), so only one block's full parameters exist at a time."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32) \
        if precision else MixedPrecisionPolicy()
    for block in module.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return Wrapped(module, lambda: _fsdp_no_sync(module))


LAYOUTS: dict[str, Callable[[GPT, JobSpec, DistEnv, torch.dtype | None], Wrapped]] = {
    "ddp": wrap_ddp,
    "fsdp": wrap_fsdp,
}


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module):
    """FSDP2's counterpart of DDP's no_sync(): skip the reduce-scatter of a micro-step."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def register_compression(ddp: nn.Module, job: JobSpec, backend: str) -> None:
    """Install ``trainer.grad_compression`` as a DDP communication hook."""
    tr = job.trainer
    kind = tr.grad_compression
    if kind == "none":
        return
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if kind in ("bf16", "powersgd") and backend != "nccl":
        # torch's bf16 hook refuses gloo; PowerSGD's chained collectives, issued from callback
        # threads, reach gloo in different orders on different ranks (a collective mismatch).
        raise ConfigError(job.name, "trainer.grad_compression",
                          f"{kind} compression needs NCCL on CUDA; use fp16 on CPU (gloo)")
    if kind == "powersgd":
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=2,
                                            start_powerSGD_iter=2, random_seed=tr.seed)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    else:
        hook = default_hooks.fp16_compress_hook if kind == "fp16" else default_hooks.bf16_compress_hook
        ddp.register_comm_hook(None, hook)
