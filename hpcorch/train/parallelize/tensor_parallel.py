"""What tensor parallelism needs beyond a family's block plan (which each family brings,
:attr:`hpcorch.train.models.spec.ModelParts.apply_tp`): the plan of a decoder's two ends, and
the loss over logits sharded on the vocabulary."""
from __future__ import annotations

import contextlib

from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
)


def residual_layout(sequence_parallel: bool):
    """The residual stream's layout between sub-layers: sharded on the sequence, or whole."""
    return Shard(1) if sequence_parallel else Replicate()


def ends_plan(spec, embedding: str | None, norm: str | None, output: str | None) -> dict[str, ParallelStyle]:
    """The plan of a decoder's ends, for the modules this stage holds (None: not here): the token
    embedding row-wise (sharded on the vocabulary), the final norm sequence-parallel under
    ``sequence_parallel``, the output layer column-wise with its logits left sharded on the
    vocabulary for ``loss_parallel`` or gathered. ``spec`` is the job's ParallelSpec."""
    seq = residual_layout(spec.sequence_parallel)
    plan: dict[str, ParallelStyle] = {}
    if embedding is not None:
        plan[embedding] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if output is not None:
        if spec.sequence_parallel:
            plan[norm] = SequenceParallel()
        plan[output] = ColwiseParallel(input_layouts=seq,
                                       output_layouts=Shard(-1) if spec.loss_parallel else Replicate(),
                                       use_local_output=not spec.loss_parallel)
    return plan


def loss_context(enabled: bool) -> contextlib.AbstractContextManager:
    """Around forward and backward when the logits are sharded on the vocabulary."""
    return loss_parallel() if enabled else contextlib.nullcontext()
