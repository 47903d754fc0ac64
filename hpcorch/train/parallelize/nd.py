"""The ``nd`` layouts: tensor, pipeline and sharded data parallelism on one device mesh.

Order, as torchtitan's: cut the pipeline stages (each a cut-down copy of the whole, seeded
model, so every layout starts from the same weights), then per stage module tensor parallelism,
``torch.compile`` of each block, and FSDP2 over the data-parallel dimensions (HSDP on a 2-D
mesh when there are replicas; under pp without resharding after forward, since every
micro-batch's backward needs the parameters again); last the pipeline stages and schedule.
"""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn as nn

from hpcorch.errors import ConfigError
from hpcorch.spec.job import JobSpec
from hpcorch.spec.parallel import Layout
from hpcorch.train.distributed import DistEnv
from hpcorch.train.models.spec import ModelParts
from hpcorch.train.optim import build_optimizer
from hpcorch.train.parallelize.base import ParallelModel, Wrapped, fsdp_no_sync, mixed_precision
from hpcorch.train.parallelize.mesh import build_mesh, dp_mesh, edge_stage_group, pp_group, pp_rank, tp_mesh

log = logging.getLogger(__name__)


def apply_fsdp(part: nn.Module, mesh, precision: torch.dtype | None, reshard_after_forward: bool) -> None:
    """FSDP2 over ``mesh``: each block its own unit, then the rest of the part."""
    from torch.distributed.fsdp import fully_shard

    mp = mixed_precision(precision)
    for block in part.blocks.values():
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(part, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)


def build_nd(module: nn.Module, family: ModelParts, job: JobSpec, env: DistEnv, layout: Layout,
             precision: torch.dtype | None) -> ParallelModel:
    """Lay ``module`` (the whole seeded model on this rank's device; ``family`` its torch half)
    out as ``layout``."""
    tr, spec = job.trainer, layout.spec
    if tr.grad_compression != "none":
        raise ConfigError(job.name, "trainer.grad_compression",
                          f"expected none for layout {layout.describe()} (compression hooks are DDP's)")
    mesh = build_mesh(layout, env.device)
    if layout.pp > 1:
        from hpcorch.train.parallelize.pipeline import cut_stages

        held = cut_stages(module, layout, pp_rank(mesh))
        del module  # only the stages stay
    else:
        held = [(0, module)]
    dpm = dp_mesh(mesh, layout)
    for _, part in held:
        if layout.tp > 1:
            family.apply_tp(part, tp_mesh(mesh), spec)
        if tr.compile:
            for block in part.blocks.values():
                block.compile()
        if dpm is not None:
            apply_fsdp(part, dpm, precision, reshard_after_forward=layout.pp == 1)
    parts = [part for _, part in held]
    pipeline = None
    if layout.pp > 1:
        from hpcorch.train.parallelize.pipeline import build_pipeline

        tie = edge_stage_group(layout, env.rank)
        pipeline = build_pipeline(held, layout, pp_group(mesh), tie, env.device, family)
    if dpm is not None and pipeline is None:
        no_sync = lambda: fsdp_no_sync(parts[0])  # noqa: E731
    else:  # no data parallelism, or the pipeline schedule skips the syncs itself
        no_sync = contextlib.nullcontext
    optimizers = [build_optimizer(part, tr.optimizer, env.device, "nd") for part in parts]
    return ParallelModel(parts[0], parts[0], env.device, precision, Wrapped(parts[0], no_sync), layout,
                         mesh=mesh, parts=parts, optimizers=optimizers, pipeline=pipeline,
                         loss_parallel=layout.tp > 1 and spec.loss_parallel)
