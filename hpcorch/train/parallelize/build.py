"""Building the model and laying it out over the ranks: seed, GPT, then the layout, gradient
compression, ``torch.compile``, mixed precision, the no-sync context for accumulation, the
optimizers, and one training step's forward/backward, gradient clipping and update.

The layout comes from ``trainer.parallel`` resolved against the world size
(:class:`hpcorch.spec.parallel.Layout`). The plain data-parallel kinds keep their code paths
(:data:`LAYOUTS`: DDP, or FSDP2 over all ranks), number for number; every other layout
(``nd``) is built on one device mesh (:mod:`.mesh`): tensor parallelism (:mod:`.tensor_parallel`),
then FSDP2/HSDP over the data-parallel dimensions, and pipeline stages (:mod:`.pipeline`).
"""
from __future__ import annotations

import torch

from hpcorch.errors import ConfigError
from hpcorch.spec.job import JobSpec
from hpcorch.spec.parallel import Layout
from hpcorch.spec.schema import Invalid
from hpcorch.train.determinism import seed_everything
from hpcorch.train.distributed import DistEnv
from hpcorch.train.models.gpt.model import GPT
from hpcorch.train.optim import build_optimizer
from hpcorch.train.parallelize.base import ParallelModel, resolve_precision
from hpcorch.train.parallelize.dp import LAYOUTS


def resolve_layout(job: JobSpec, world_size: int) -> Layout:
    """``trainer.parallel`` on ``world_size`` ranks, or the one-line error."""
    try:
        return job.trainer.layout(world_size)
    except Invalid as exc:
        raise ConfigError(job.name, f"trainer.{exc.field}", exc.message) from None


def build_parallel_model(job: JobSpec, env: DistEnv) -> ParallelModel:
    """Seed, build the GPT on this rank's device, lay it out, (optionally) compile it, and
    build the optimizers."""
    tr = job.trainer
    layout = resolve_layout(job, env.world_size)
    precision = resolve_precision(tr.precision, env.device)
    seed_everything(tr.seed)  # the same initial weights on every rank (determinism rule 2)
    module = GPT(tr.model, activation_checkpointing=tr.activation_checkpointing).to(env.device)
    if layout.kind == "nd":
        from hpcorch.train.parallelize.nd import build_nd

        return build_nd(module, job, env, layout, precision)
    # One rank is both kinds: trainer.sharding decides, as it always did.
    kind = layout.kind if layout.dp > 1 else tr.sharding
    wrapped = LAYOUTS[kind](module, job, env, precision)
    model = torch.compile(wrapped.model) if tr.compile else wrapped.model
    optimizer = build_optimizer(module, tr.optimizer, env.device, kind)
    return ParallelModel(module, model, env.device, precision, wrapped, layout, parts=[module],
                         optimizers=[optimizer])
