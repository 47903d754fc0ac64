"""The GPT's tensor (and sequence) parallel plan through ``parallelize_module``, in the manner of
torchtitan's llama plan (our own code); the layouts apply it through the family's
:class:`~hpcorch.train.models.spec.ModelParts` (:mod:`hpcorch.train.parallelize.nd`):

- attention: q, k and v column-wise with whole heads per rank (:class:`QKVColwise`: the fused
  weight is sharded on its per-projection output dimension), the output projection row-wise;
- MLP: ``fc`` column-wise, ``proj`` row-wise (one all-reduce, or reduce-scatter under sequence
  parallelism, per sub-layer);
- the token embedding row-wise, i.e. sharded on the vocabulary; the head column-wise, its
  logits left sharded on the vocabulary for the loss (``loss_parallel``) or gathered;
- ``sequence_parallel``: the norms (and the residual stream between sub-layers) sharded on the
  sequence dimension; attention and MLP gather it at their input.

The head shares the embedding's placement (vocabulary rows, ``Shard(0)``), so the tied weight
stays one parameter after parallelization (:func:`apply_tp` re-ties it).
"""
from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from hpcorch.spec.parallel import ParallelSpec
from hpcorch.train.models.gpt.model import GPT
from hpcorch.train.parallelize.tensor_parallel import ends_plan, residual_layout


class QKVColwise(ParallelStyle):
    """Column-wise parallelism of :class:`~.model.QKV`: its (3, width, width) weight
    is sharded on dimension 1, so each rank holds q, k and v of the same whole heads (a plain
    column-wise split of a fused (3 * width) output would give rank 0 all of q). The input is
    handed over as a local tensor whose gradient, partial on each rank, is summed over tp."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, partition_fn=self._partition, input_fn=self._input)

    @staticmethod
    def _partition(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for pname, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(pname, nn.Parameter(distribute_tensor(param, mesh, [Shard(1)])))

    @staticmethod
    def _input(module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
        x = inputs[0]
        if not isinstance(x, DTensor):  # without sequence parallelism: replicated over tp
            x = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
        # Each rank's heads contribute part of the input's gradient: declared Partial here, it
        # is all-reduced (or reduce-scattered back to the sequence shards) on its way back.
        return (x.to_local(grad_placements=[Partial()]), *inputs[1:])


def apply_tp(model: GPT, mesh: DeviceMesh, spec: ParallelSpec) -> None:
    """Parallelize ``model`` (the whole GPT or one pipeline stage) over the 1-D tp ``mesh``."""
    tp, sp = mesh.size(), spec.sequence_parallel
    seq = residual_layout(sp)
    top = ends_plan(spec, "wte" if model.wte is not None else None, "ln_f",
                    "head" if model.head is not None else None)
    if model.wte is not None and sp:  # the position embedding's rows for this rank's part of the sequence
        top["wpe"] = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Shard(0))
    parallelize_module(model, mesh, top)
    for block in model.blocks.values():
        plan: dict[str, ParallelStyle] = {
            "attn.qkv": QKVColwise(),
            "attn.proj": RowwiseParallel(output_layouts=seq),
            "mlp.fc": ColwiseParallel(),
            "mlp.proj": RowwiseParallel(output_layouts=seq),
        }
        if sp:
            plan.update({"ln1": SequenceParallel(), "ln2": SequenceParallel(),
                         "attn": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                         "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))})
        parallelize_module(block, mesh, plan)
        block.attn.heads = model.cfg.heads // tp  # attention's view: this rank's heads
    if model.wte is not None and model.head is not None:
        model.head.weight = model.wte.weight  # re-tie: both are the vocabulary rows, Shard(0)

