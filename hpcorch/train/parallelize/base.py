"""What every layout makes of the model: :class:`Wrapped` (the module that runs forward and backward,
and how to skip a micro-step's reduction) and :class:`ParallelModel` (one training step's
forward/backward, gradient clipping and update over the model's parts), plus the precision and
FSDP2 pieces the layouts share."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from hpcorch.spec.parallel import Layout
from hpcorch.train.determinism import rng_state, set_rng_state
from hpcorch.train.optim import set_lr


@dataclass(frozen=True)
class Wrapped:
    """What a layout makes of the raw model."""

    model: nn.Module                            # runs forward and backward
    no_sync: Callable[[], contextlib.AbstractContextManager]       # skips the gradient reduction of a micro-step
    settle_buckets: bool = False                # see ParallelModel.settle


@dataclass
class ParallelModel:
    """The model of this rank. ``parts`` are the modules it holds, with the whole model's
    parameter names: ``[the model]`` without pipeline parallelism, else one cut-down copy per
    pipeline stage held; ``optimizers`` one per part, stepped together. ``module`` is
    ``parts[0]`` and ``model`` what a non-pipelined forward runs through (DDP, compiled)."""

    module: nn.Module  # the model family's module (parts[0])
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

    def no_sync(self, last_micro: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients only on the last micro-step of an accumulated step."""
        return contextlib.nullcontext() if last_micro else self.wrapped.no_sync()

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the training precision (nothing in fp32)."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    def loss_context(self) -> contextlib.AbstractContextManager:
        from hpcorch.train.parallelize.tensor_parallel import loss_context

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
        from hpcorch.train.parallelize.gradnorm import clip_grad_norm

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


def mixed_precision(precision: torch.dtype | None):
    """FSDP2's policy: parameters in the training precision, gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32) \
        if precision else MixedPrecisionPolicy()


@contextlib.contextmanager
def fsdp_no_sync(module: nn.Module):
    """FSDP2's counterpart of DDP's no_sync(): skip the reduce-scatter of a micro-step."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
