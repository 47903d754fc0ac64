"""What the decoder families' modules share (torch): the run of the blocks (with activation
checkpointing), the pipeline cut of the blocks, and the loss (whole, or in chunks of tokens:
:func:`head_and_loss`). Each family's module keeps the rest, its own layers, in its folder.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, Replicate
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


def _chunk_loss(output: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = output(hidden)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), reduction="sum")


def head_and_loss(hidden: torch.Tensor, output: nn.Module, targets: torch.Tensor, chunk_tokens: int):
    """``(logits, loss)`` of the final norm's output ``hidden`` (batch, time, width) through the
    output layer: the mean cross-entropy of :func:`causal_lm_loss`.

    With a vocabulary of 32k-128k the fp32 logits of a micro-batch and their gradients are a
    step's largest tensors (``batch x time x vocab``). Above ``chunk_tokens`` tokens (0: never)
    the output layer and the cross-entropy run on chunks of the sequence, ``max(1, chunk_tokens //
    batch)`` positions of every sequence each (at most ``chunk_tokens`` tokens unless the batch
    alone is more), each under activation checkpointing: the forward keeps only ``hidden``, and the
    backward recomputes one chunk's logits at a time (one more output-layer forward per step), so
    the peak holds one chunk's logits. Logits are then None (never whole). The sum of the chunks'
    sums over the token count is the mean up to fp32 summation order; the chunks are fixed by
    the shapes, so it is deterministic. (Targets hold no ignored index: the mean counts every
    token, as the token loader's targets always are.)

    Under tensor parallelism the output layer's column-wise plan still applies per chunk (loss
    parallelism included: each chunk's logits stay sharded on the vocabulary); a hidden state
    sharded on the sequence (sequence parallelism) is gathered once first, as the output layer
    would gather it."""
    B, T = targets.shape
    if chunk_tokens <= 0 or chunk_tokens >= B * T:
        logits = output(hidden)
        return logits, causal_lm_loss(logits, targets)
    if isinstance(hidden, DTensor):
        hidden = hidden.redistribute(placements=[Replicate()] * hidden.device_mesh.ndim)
    step = max(1, chunk_tokens // B)  # positions per chunk
    total = None
    for start in range(0, T, step):
        part = checkpoint(_chunk_loss, output, hidden[:, start:start + step], targets[:, start:start + step],
                          use_reentrant=False, preserve_rng_state=False)
        total = part if total is None else total + part
    return None, total / targets.numel()
