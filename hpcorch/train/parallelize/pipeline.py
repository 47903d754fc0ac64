"""Pipeline parallelism with ``torch.distributed.pipelining``: the model cut into stages, one
:class:`PipelineStage` per stage this rank holds, and the schedule (gpipe, 1f1b or
interleaved_1f1b) that runs a step's micro-batches through them.

Gradient accumulation is the schedule's micro-batches (``Layout.accumulation``): the loss of
each micro-batch is the model's mean cross-entropy and the schedule divides the accumulated
gradients by their number, so a step's gradient is the mean over micro-batches, as DDP's.

A tied weight (the family's :attr:`~hpcorch.train.models.spec.ModelParts.tied_weights`, the
GPT's embedding and head): the first stage holds one copy and the last stage the other,
initialised equal. After each backward their gradients are summed between the two
ranks (:meth:`Pipeline.sync_tied_grads`), so both copies take the same step and stay equal.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor

from hpcorch.spec.parallel import Layout
from hpcorch.train.models.spec import ModelParts

SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved_1f1b": "ScheduleInterleaved1F1B"}


def cut_stages(model: nn.Module, layout: Layout, pp_rank: int) -> list[tuple[int, nn.Module]]:
    """The stages this rank holds, as ``(stage index, module)``: copies of ``model`` (built
    and seeded as a whole, so every stage starts from the whole model's weights) cut down to
    each stage's layers. ``model`` itself becomes the last of them."""
    import copy

    num = layout.spec.num_stages
    layers = layout.spec.stage_layers(model.cfg.layers)
    out = []
    ids = layout.stage_ids(pp_rank)
    for k, sid in enumerate(ids):
        # The last stage held is cut from the model itself: one copy fewer at build time.
        whole = model if k == len(ids) - 1 else copy.deepcopy(model)
        out.append((sid, whole.keep_only(layers[sid], first=sid == 0, last=sid == num - 1)))
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass
class Pipeline:
    """This rank's stages and their schedule."""

    schedule: object
    stages: list
    parts: list[nn.Module]
    has_first: bool          # holds stage 0 (feeds the inputs)
    has_last: bool           # holds the last stage (computes the loss)
    tie_group: dist.ProcessGroup | None
    microbatches: int
    tied_weights: Callable[[nn.Module], tuple] = lambda part: (None, None)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one step's batch (this dp rank's, all micro-batches
        concatenated); the mean micro-batch loss on the last stage, 0 elsewhere."""
        losses: list[torch.Tensor] = []
        args = (x,) if self.has_first else ()
        self.schedule.step(*args, target=y if self.has_last else None, losses=losses, return_outputs=False)
        self.sync_tied_grads()
        return self._mean(losses, x.device)

    @torch.no_grad()
    def eval(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward only: the mean micro-batch loss on the last stage, 0 elsewhere."""
        losses: list[torch.Tensor] = []
        args = (x,) if self.has_first else ()
        self.schedule.eval(*args, target=y if self.has_last else None, losses=losses)
        return self._mean(losses, x.device)

    def _mean(self, losses: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        if not self.has_last:
            return torch.zeros((), device=device)
        return torch.stack([_local(loss).detach().float() for loss in losses]).sum() / len(losses)

    def sync_tied_grads(self) -> None:
        """Sum the gradients of the two copies of the tied weight (first stage's embedding,
        last stage's head) so that both see the whole model's gradient."""
        if self.tie_group is None:
            return
        weight = None
        for part in self.parts:
            first, last = self.tied_weights(part)
            if first is not None:
                weight = first
            elif last is not None:
                weight = last
        if weight is None:  # an untied family
            return
        from hpcorch.train.parallelize.gradnorm import settle_grads

        settle_grads([weight])  # both copies' gradients in the weight's own placements
        grad = weight.grad
        local = grad.to_local() if isinstance(grad, DTensor) else grad
        dist.all_reduce(local, op=dist.ReduceOp.SUM, group=self.tie_group)

    def tied_copy(self) -> set[int]:
        """``id`` of the last stage's copy of the tied weight (not counted twice in norms)."""
        pairs = [self.tied_weights(p) for p in self.parts]
        return {id(last) for first, last in pairs if last is not None and first is None}


def build_pipeline(stages: list[tuple[int, nn.Module]], layout: Layout, group: dist.ProcessGroup,
                   tie_group: dist.ProcessGroup | None, device: torch.device, family: ModelParts) -> Pipeline:
    """Wrap the (already parallelized) stage modules of this rank and make the schedule (with
    the ``family``'s loss and tied weights). The last stage hands its final norm's output to
    the loss, which applies the output layer (its :meth:`lm_loss`, in chunks above
    ``trainer.loss_chunk`` tokens), so the whole micro-batch's logits need never exist."""
    from torch.distributed import pipelining

    num = layout.spec.num_stages
    loss_fn = family.loss
    for sid, part in stages:
        if sid == num - 1:
            part.head_in_loss = True
            loss_fn = part.lm_loss
    pstages = [pipelining.PipelineStage(part, sid, num, device, group=group) for sid, part in stages]
    cls = getattr(pipelining, SCHEDULES[layout.spec.pp_schedule])
    n = layout.accumulation
    if layout.spec.pp_schedule == "interleaved_1f1b":
        schedule = cls(pstages, n_microbatches=n, loss_fn=loss_fn, scale_grads=True)
    else:
        if len(pstages) != 1:
            raise ValueError(f"schedule {layout.spec.pp_schedule} runs one stage per rank, got {len(pstages)}")
        schedule = cls(pstages[0], n_microbatches=n, loss_fn=loss_fn, scale_grads=True)
    ids = [sid for sid, _ in stages]
    return Pipeline(schedule, pstages, [p for _, p in stages], 0 in ids, num - 1 in ids, tie_group, n,
                    family.tied_weights)
