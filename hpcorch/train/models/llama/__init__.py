"""The Llama family (``trainer.model.kind: llama``): Llama 2/3's decoder.

- :mod:`.model`: the module (torch); :mod:`.parallelize`: its tensor-parallel plan (torch);
- :mod:`.shapes`: parameters, FLOPs and the memory estimate's shapes (no torch).

Importing this package does not import torch: :data:`SPEC` loads the torch half on demand.
"""
from __future__ import annotations

from hpcorch.spec.model import LlamaConfig
from hpcorch.train.models.llama.shapes import SHAPES
from hpcorch.train.models.spec import ModelParts, ModelSpec


def load_parts() -> ModelParts:
    """The module, tp plan, loss and tied weights (imports torch). No checkpoint of an older
    shape exists, and the trainer's tensors are the files' (``export`` the identity)."""
    from hpcorch.train.models.llama.model import Llama
    from hpcorch.train.models.llama.parallelize import apply_tp

    return ModelParts(build=Llama, apply_tp=apply_tp, loss=Llama.loss, tied_weights=Llama.tied_weights,
                      upgrade_state=lambda state, cfg: state)


# With ``tied: true`` the output layer is the token embedding: checkpoints store it once, as
# tok_embeddings.weight (Hugging Face's tie_word_embeddings); untied, both are weights of their own.
SPEC = ModelSpec(kind="llama", config_cls=LlamaConfig, shapes=SHAPES, load_parts=load_parts,
                 tied=("tok_embeddings.weight", "output.weight"), ties=lambda cfg: cfg.tied)
