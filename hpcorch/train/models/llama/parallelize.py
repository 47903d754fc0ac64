"""The Llama's tensor (and sequence) parallel plan through ``parallelize_module`` (torchtitan's
llama plan, in our own code); the layouts apply it through the family's
:class:`~hpcorch.train.models.spec.ModelParts` (:mod:`hpcorch.train.parallelize.nd`):

- attention: ``wq``, ``wk``, ``wv`` column-wise, ``wo`` row-wise. Each rank takes whole query
  heads *and* whole key/value heads, and the contiguous split keeps every query head with its
  key/value head (query head j reads kv head j // (heads / kv_heads)), so **tp must divide
  kv_heads** (hence heads). A job that asks otherwise is refused when it loads, before any
  rank starts: one line naming ``trainer.parallel.tp`` and the model's kv_heads
  (:meth:`hpcorch.spec.parallel.ParallelSpec.check_model`).
- MLP: ``w1`` (gate) and ``w3`` (up) column-wise, ``w2`` row-wise;
- the token embedding row-wise (sharded on the vocabulary); the output layer column-wise, its
  logits left sharded on the vocabulary for the loss (``loss_parallel``) or gathered;
- ``sequence_parallel``: the RMSNorms (and the residual stream between sub-layers) sharded on
  the sequence dimension; attention and the MLP gather it at their input.

A tied output layer shares the embedding's placement (vocabulary rows, ``Shard(0)``), so it
stays one parameter after parallelization (:func:`apply_tp` re-ties it).
"""
from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from hpcorch.spec.parallel import ParallelSpec
from hpcorch.train.models.llama.model import Llama
from hpcorch.train.parallelize.tensor_parallel import ends_plan, residual_layout


def apply_tp(model: Llama, mesh: DeviceMesh, spec: ParallelSpec) -> None:
    """Parallelize ``model`` (the whole Llama or one pipeline stage) over the 1-D tp ``mesh``."""
    tp, sp, cfg = mesh.size(), spec.sequence_parallel, model.cfg
    if cfg.kv_heads % tp:  # the job's check refuses this first; a direct caller meets it here
        raise ValueError(f"trainer.parallel.tp ({tp}) must divide the model's {cfg.kv_heads} kv_heads")
    seq = residual_layout(sp)
    top = ends_plan(spec, "tok_embeddings" if model.tok_embeddings is not None else None, "norm",
                    "output" if model.output is not None else None)
    parallelize_module(model, mesh, top)
    for block in model.blocks.values():
        plan: dict[str, ParallelStyle] = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=seq),
        }
        if sp:
            plan.update({
                "attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel(),
                "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                                desired_input_layouts=(Replicate(), None, None)),
                "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            })
        parallelize_module(block, mesh, plan)
        block.attention.heads = cfg.heads // tp  # attention's view: this rank's heads
        block.attention.kv_heads = cfg.kv_heads // tp
    if cfg.tied and model.tok_embeddings is not None and model.output is not None:
        model.output.weight = model.tok_embeddings.weight  # re-tie: both are the vocabulary rows, Shard(0)
