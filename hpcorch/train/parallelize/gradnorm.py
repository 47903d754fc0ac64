"""Gradient clipping by the true global norm when the gradients are DTensors on different
meshes (tp-sharded, FSDP-sharded, both, or replicated) and spread over pipeline stages.

torch's ``clip_grad_norm_`` needs every gradient on one mesh and sees one stage only. Here each
rank adds up the squares of its local gradient shards, each divided by the number of ranks of
its pipeline position that hold the same shard (a replicated tensor is counted once over its
copies, a sharded one once per shard); one SUM all-reduce over the world then gives every rank
the squared norm of the whole model. The copy of the tied embedding that a last pipeline stage
holds as ``head.weight`` is left out (``skip``): it is the same weight as ``wte.weight``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def _replicas(grad: torch.Tensor, ranks_per_stage: int) -> int:
    """How many ranks of one pipeline position hold the same values as this rank's ``grad``."""
    if not isinstance(grad, DTensor):
        return ranks_per_stage
    shards = 1
    for size, placement in zip(grad.device_mesh.shape, grad.placements, strict=True):
        if placement.is_shard() or type(placement).__name__ == "_StridedShard":
            shards *= size
    return ranks_per_stage // shards


def settle_grads(params: list[torch.nn.Parameter]) -> None:
    """Give every DTensor gradient its parameter's placements. DTensor's backward may leave a
    gradient Partial (a sum still owed over some ranks) or Replicate where the parameter is
    sharded (the vocabulary-sharded embedding's gradient comes back whole on every tp rank):
    the norm, the tied-weight sum and the optimizer then all see one layout per parameter."""
    for p in params:
        g = p.grad
        if isinstance(g, DTensor) and tuple(g.placements) != tuple(p.placements):
            p.grad = g.redistribute(g.device_mesh, p.placements)


def global_grad_norm(params: list[torch.nn.Parameter], ranks_per_stage: int,
                     device: torch.device) -> torch.Tensor:
    """The 2-norm of all gradients of the model (a collective over the world: every rank)."""
    total = torch.zeros((), device=device, dtype=torch.float64)
    for p in params:
        g = p.grad
        if g is None:
            continue
        local = g.to_local() if isinstance(g, DTensor) else g
        total += local.detach().double().pow(2).sum() / _replicas(g, ranks_per_stage)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.sqrt().float()


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, ranks_per_stage: int,
                   device: torch.device, skip: set[int] = frozenset()) -> torch.Tensor:
    """Scale all gradients so that their global norm is at most ``max_norm`` (as torch's
    ``clip_grad_norm_``: by ``max_norm / (norm + 1e-6)`` when that is below 1); returns the norm
    before clipping. ``skip`` holds the ``id`` of parameters not counted (still scaled)."""
    settle_grads(params)
    norm = global_grad_norm([p for p in params if id(p) not in skip], ranks_per_stage, device)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            g = p.grad
            (g.to_local() if isinstance(g, DTensor) else g).mul_(coef.to(g.dtype))
    return norm
