"""The optimizer (AdamW or Adafactor, with and without weight decay groups) and the learning
rate schedule (linear warmup, cosine decay), a pure function of the step."""
from __future__ import annotations

import math

import torch

from hpcorch.spec.job import OptimizerSpec


def build_optimizer(module: torch.nn.Module, opt: OptimizerSpec, device: torch.device,
                    kind: str) -> torch.optim.Optimizer:
    """The optimizer over ``module``'s trainable parameters (one pipeline stage's, under pp).
    Matrices (embeddings, linear weights) decay; biases and norm gains do not, as in GPT-2 and
    nanoGPT. ``kind`` is the layout's (``Layout.kind``): only plain DDP takes the fused kernel."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if opt.name == "adafactor":
        return torch.optim.Adafactor(groups, lr=opt.lr)
    # The fused kernel needs plain CUDA tensors: DTensor parameters (FSDP2, tp) take the default.
    fused = device.type == "cuda" and kind == "ddp"
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), fused=fused)


def lr_at(step: int, opt: OptimizerSpec, total_steps: int) -> float:
    """Linear warmup then cosine decay to ``min_lr``: a pure function of the step, so a
    checkpoint needs no scheduler state."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    span = max(1, total_steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    return opt.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (opt.lr - opt.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply ``lr`` to every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
