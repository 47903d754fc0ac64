"""The GPT family (``trainer.model.kind: gpt``, the default): GPT-2's decoder.

- :mod:`.model`: the module (torch); :mod:`.parallelize`: its tensor-parallel plan (torch);
- :mod:`.shapes`: parameters, FLOPs and the memory estimate's shapes (no torch).

Importing this package does not import torch: :data:`SPEC` loads the torch half on demand.
"""
from __future__ import annotations

from hpcorch.spec.model import GPTConfig
from hpcorch.train.models.gpt.shapes import SHAPES
from hpcorch.train.models.spec import ModelParts, ModelSpec


def load_parts() -> ModelParts:
    """The module, tp plan, loss, tied weights and checkpoint upgrade (imports torch)."""
    from hpcorch.train.models.gpt.model import GPT, export_tensor, legacy_state
    from hpcorch.train.models.gpt.parallelize import apply_tp

    return ModelParts(build=GPT, apply_tp=apply_tp, loss=GPT.loss, tied_weights=GPT.tied_weights,
                      upgrade_state=lambda state, cfg: legacy_state(state, cfg.width), export=export_tensor)


# The head shares the token embedding: checkpoints store it once, as wte.weight.
SPEC = ModelSpec(kind="gpt", config_cls=GPTConfig, shapes=SHAPES, load_parts=load_parts,
                 tied=("wte.weight", "head.weight"))
