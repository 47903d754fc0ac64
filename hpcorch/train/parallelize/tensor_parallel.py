"""What tensor parallelism needs beyond a family's plan (which each family brings,
:attr:`hpcorch.train.models.spec.ModelParts.apply_tp`): the loss over logits sharded on the
vocabulary."""
from __future__ import annotations

import contextlib

from torch.distributed.tensor.parallel import loss_parallel


def loss_context(enabled: bool) -> contextlib.AbstractContextManager:
    """Around forward and backward when the logits are sharded on the vocabulary."""
    return loss_parallel() if enabled else contextlib.nullcontext()
