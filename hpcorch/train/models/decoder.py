"""What the decoder families' modules share (torch): the run of the blocks (with activation
checkpointing), the pipeline cut of the blocks, and the loss. Each family's module keeps the
rest, its own layers, in its folder.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def run_blocks(blocks: nn.ModuleDict, x: torch.Tensor, *args, checkpointing: bool = False) -> torch.Tensor:
    """``x`` through the blocks in layer order, ``args`` handed to each (the rotary tables);
    ``checkpointing``: each block's activations recomputed in backward instead of kept."""
    for block in blocks.values():
        x = checkpoint(block, x, *args, use_reentrant=False) if checkpointing else block(x, *args)
    return x


def keep_layers(blocks: nn.ModuleDict, layers: range) -> None:
    """Drop the blocks outside ``layers`` (a pipeline stage's); the others keep their keys."""
    for key in [k for k in blocks if int(k) not in layers]:
        del blocks[key]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the tokens (fp32). Logits sharded on the vocabulary (a
    DTensor, loss parallel) need :func:`torch.distributed.tensor.parallel.loss_parallel`."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
