"""The plain data-parallel layouts (:data:`LAYOUTS`): DDP with optional gradient compression, or
FSDP2 over all ranks, kept number for number as they always were."""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn

from hpcorch.errors import ConfigError
from hpcorch.spec.job import JobSpec
from hpcorch.train.distributed import DistEnv
from hpcorch.train.parallelize.base import Wrapped, fsdp_no_sync, mixed_precision


def wrap_ddp(module: nn.Module, job: JobSpec, env: DistEnv, precision: torch.dtype | None) -> Wrapped:
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


def wrap_fsdp(module: nn.Module, job: JobSpec, env: DistEnv, precision: torch.dtype | None) -> Wrapped:
    """Shard parameters with FSDP2: each block is its own unit, then the root (embeddings,
    final norm, head), so only one block's full parameters exist at a time."""
    from torch.distributed.fsdp import fully_shard

    mp = mixed_precision(precision)
    for block in module.blocks.values():
        fully_shard(block, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return Wrapped(module, lambda: fsdp_no_sync(module))


LAYOUTS: dict[str, Callable[[nn.Module, JobSpec, DistEnv, torch.dtype | None], Wrapped]] = {
    "ddp": wrap_ddp,
    "fsdp": wrap_fsdp,
}


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
