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

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..spec.job import JobSpec
from ..spec.parallel import Layout
from ..spec.schema import Invalid
from .determinism import rng_state, seed_everything, set_rng_state
from .distributed import DistEnv
from .model import GPT
from .optim import build_optimizer, set_lr


@dataclass(frozen=True)
class Wrapped:
    """What a layout makes of the raw model."""

    model: nn.Module                            # runs forward and backward
    no_sync: Callable[[], ContextManager]       # skips the gradient reduction of a micro-step
    settle_buckets: bool = False                # see ParallelModel.settle


@dataclass
class ParallelModel:
    """The model of this rank. ``parts`` are the modules it holds, with the whole model's
    parameter names: ``[the GPT]`` without pipeline parallelism, else one cut-down GPT per
    pipeline stage held; ``optimizers`` one per part, stepped together. ``module`` is
    ``parts[0]`` and ``model`` what a non-pipelined forward runs through (DDP, compiled)."""

    module: GPT
    model: nn.Module
    device: torch.device
    precision: torch.dtype | None
    wrapped: Wrapped
    layout: Layout
    mesh: object = None                    # the DeviceMesh of an nd layout
    parts: list[nn.Module] = field(default_factory=list)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    pipeline: object = None                # a pipeline.Pipeline under pp
    loss_parallel: bool = False            # logits sharded on the vocabulary (tp)

    @property
    def plain(self) -> bool:
        """The ddp and fsdp kinds: today's code paths, bit for bit."""
        return self.mesh is None

    @property
    def loss_weight(self) -> float:
        """What this rank's loss counts for in the mean over ranks: under pp only the last
        stage has one, and it stands for the pp ranks of its pipeline."""
        if self.pipeline is None:
            return 1.0
        return float(self.layout.pp) if self.pipeline.has_last else 0.0

    def no_sync(self, last_micro: bool) -> ContextManager:
        """Reduce gradients only on the last micro-step of an accumulated step."""
        return contextlib.nullcontext() if last_micro else self.wrapped.no_sync()

    def autocast(self) -> ContextManager:
        """Autocast to the training precision (nothing in fp32)."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def loss_context(self) -> ContextManager:
        from .tensor_parallel import loss_context

        return loss_context(self.loss_parallel)

    def train(self, mode: bool = True) -> None:
        """Training (or evaluation) mode for every part."""
        self.model.train(mode)
        for part in self.parts:
            part.train(mode)

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

    def forward_backward(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Forward and backward of this rank's micro-batches of one step (gradients are the
        mean over them); this rank's mean micro-batch loss (0 on pipeline stages but the last)."""
        n = len(batches)
        if self.pipeline is not None:  # the schedule splits the batch into its micro-batches
            x = torch.cat([b[0] for b in batches]).to(self.device, non_blocking=True)
            y = torch.cat([b[1] for b in batches]).to(self.device, non_blocking=True)
            with self.autocast(), self.loss_context():
                return self.pipeline.step(x, y)
        loss_sum = torch.zeros((), device=self.device)
        for k, (x, y) in enumerate(batches):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.plain:  # as it always was (the backward outside the contexts)
                with self.no_sync(k == n - 1), self.autocast():
                    _, loss = self.model(x, y)
                (loss / n).backward()
            else:  # FSDP2 reads the no-sync flag in the backward; loss parallel needs it too
                with self.no_sync(k == n - 1), self.autocast(), self.loss_context():
                    _, loss = self.model(x, y)
                    (loss / n).backward()
                loss = _full(loss)
            loss_sum += loss.detach()
        return loss_sum / n

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """This rank's weighted validation loss of one batch (see :attr:`loss_weight`)."""
        x, y = x.to(self.device), y.to(self.device)
        with self.autocast(), self.loss_context():
            if self.pipeline is not None:
                return self.pipeline.eval(x, y) * self.loss_weight
            _, loss = self.model(x, y)
        return _full(loss)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip to ``max_norm`` by the global gradient norm; returns the norm before."""
        if self.plain:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        from .gradnorm import clip_grad_norm

        params = list({id(p): p for part in self.parts for p in part.parameters()}.values())
        skip = self.pipeline.tied_copy() if self.pipeline is not None else set()
        with torch.no_grad():
            return clip_grad_norm(params, max_norm, self.layout.world_size // self.layout.pp, self.device, skip)

    def set_lr(self, lr: float) -> None:
        """Apply ``lr`` to every part's optimizer."""
        for opt in self.optimizers:
            set_lr(opt, lr)

    def optimizer_step(self) -> None:
        """Step every part's optimizer, then drop the gradients."""
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (the loss under loss parallelism) as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def resolve_precision(want: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.precision``; None means fp32 (no autocast)."""
    if want == "auto":
        want = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if want == "bf16" else None


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
        from .ndlayout import build_nd

        return build_nd(module, job, env, layout, precision)
    # One rank is both kinds: trainer.sharding decides, as it always did.
    kind = layout.kind if layout.dp > 1 else tr.sharding
    wrapped = LAYOUTS[kind](module, job, env, precision)
    model = torch.compile(wrapped.model) if tr.compile else wrapped.model
    optimizer = build_optimizer(module, tr.optimizer, env.device, kind)
    return ParallelModel(module, model, env.device, precision, wrapped, layout, parts=[module],
                         optimizers=[optimizer])


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
    from torch.distributed.fsdp import fully_shard

    mp = mixed_precision(precision)
    for block in module.blocks.values():
        fully_shard(block, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return Wrapped(module, lambda: fsdp_no_sync(module))


def mixed_precision(precision: torch.dtype | None):
    """FSDP2's policy: parameters in the training precision, gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32) \
        if precision else MixedPrecisionPolicy()


LAYOUTS: dict[str, Callable[[GPT, JobSpec, DistEnv, torch.dtype | None], Wrapped]] = {
    "ddp": wrap_ddp,
    "fsdp": wrap_fsdp,
}


@contextlib.contextmanager
def fsdp_no_sync(module: nn.Module):
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
