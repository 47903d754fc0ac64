"""Building the model and laying it out over the ranks: seed, the job's model family
(:mod:`hpcorch.train.models`, by ``trainer.model.kind``), then the layout, gradient
compression, ``torch.compile``, mixed precision, the no-sync context for accumulation, the
optimizers, and one training step's forward/backward, gradient clipping and update.

The layout comes from ``trainer.parallel`` resolved against the world size
(:class:`hpcorch.spec.parallel.Layout`). The plain data-parallel kinds keep their code paths
(:data:`LAYOUTS`: DDP, or FSDP2 over all ranks), number for number; every other layout
(``nd``) is built on one device mesh (:mod:`.mesh`): tensor parallelism (the family's plan),
then FSDP2/HSDP over the data-parallel dimensions, and pipeline stages (:mod:`.pipeline`).
Nothing here knows the family: its module, tp plan, loss and tied weights come from its
:class:`~hpcorch.train.models.spec.ModelParts`.
"""
from __future__ import annotations

import torch

from hpcorch.errors import ConfigError
from hpcorch.spec.job import JobSpec
from hpcorch.spec.parallel import Layout
from hpcorch.spec.schema import Invalid
from hpcorch.train.determinism import seed_everything
from hpcorch.train.distributed import DistEnv
from hpcorch.train.models import spec_of
from hpcorch.train.optim import build_optimizer
from hpcorch.train.parallelize.base import ParallelModel, resolve_precision
from hpcorch.train.parallelize.dp import LAYOUTS


def resolve_layout(job: JobSpec, world_size: int) -> Layout:
    """``trainer.parallel`` on ``world_size`` ranks, or the one-line error."""
    try:
        return job.trainer.layout(world_size)
    except Invalid as exc:
        raise ConfigError(job.name, f"trainer.{exc.field}", exc.message) from None


def build_parallel_model(job: JobSpec, env: DistEnv, initial: dict | None = None) -> ParallelModel:
    """Seed, build the job's model on this rank's device (``initial``'s weights, canonical
    names, instead of the random ones where given: ``trainer.init_from``), lay it out,
    (optionally) compile it, and build the optimizers."""
    tr = job.trainer
    layout = resolve_layout(job, env.world_size)
    precision = resolve_precision(tr.precision, env.device)
    family = spec_of(tr.model).parts()  # imports the family's modules before the seed, as always
    seed_everything(tr.seed)  # the same initial weights on every rank (determinism rule 2)
    module = family.build(tr.model, activation_checkpointing=tr.activation_checkpointing, loss_chunk=tr.loss_chunk)
    if initial is not None:  # whole, before any layout: every rank loads the same numbers
        load_whole(module, initial, spec_of(tr.model).tied_names(tr.model), job.name)
    module = module.to(env.device)
    if layout.kind == "nd":
        from hpcorch.train.parallelize.nd import build_nd

        return build_nd(module, family, job, env, layout, precision)
    # One rank is both kinds: trainer.sharding decides, as it always did.
    kind = layout.kind if layout.dp > 1 else tr.sharding
    wrapped = LAYOUTS[kind](module, job, env, precision)
    model = torch.compile(wrapped.model) if tr.compile else wrapped.model
    optimizer = build_optimizer(module, tr.optimizer, env.device, kind)
    return ParallelModel(module, model, env.device, precision, wrapped, layout, parts=[module],
                         optimizers=[optimizer])


def load_whole(module: torch.nn.Module, state: dict, tied: tuple[str, str] | None, job: str) -> None:
    """Copy a canonical state into the whole, freshly built ``module``: every parameter but the
    tied alias (which shares the canonical one's storage) must be there, nothing else."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if tied is None or k != tied[1]]
    if missing or unexpected:
        raise ConfigError(job, "trainer.init_from", f"the checkpoint's tensors do not fit the model: missing "
                          f"{missing[:3] or 'none'}, unexpected {unexpected[:3] or 'none'}")
