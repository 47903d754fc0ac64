"""The model families' configs: the ``trainer.model`` section of a job spec, without torch.

``trainer.model`` is a choice tagged on ``kind`` (:data:`MODEL_CONFIGS`); a file without
``kind`` means :data:`DEFAULT_KIND`, so job files written before there were families still
load. Each family's config is a frozen dataclass with ``kind: Literal[<its kind>]``, whose
``__post_init__`` holds the checks that need no torch. What the rest of hpcorch needs to know
of a family (its module, tensor-parallel plan, pipeline cut, parameter and FLOP counts, the
memory estimate's shapes) is its entry in :mod:`hpcorch.train.models`, found by ``kind``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hpcorch.spec.schema import Invalid, check_positive

# Far above any model (the largest have a few hundred), far below a typo that makes the
# planner, which walks the layers, take minutes and gigabytes.
MAX_LAYERS = 10_000


def check_shape(cfg) -> None:
    """The checks every decoder family shares: positive sizes, a sane layer count, whole heads."""
    check_positive(cfg, "layers", "heads", "width", "seq_len", "vocab")
    if cfg.layers > MAX_LAYERS:
        raise Invalid("layers", f"expected at most {MAX_LAYERS:,} layers, got {cfg.layers:,}")
    if cfg.width % cfg.heads:
        raise Invalid("width", f"expected a multiple of heads ({cfg.heads}), got {cfg.width}")


@dataclass(frozen=True)
class GPTConfig:
    """GPT-2's shape (:mod:`hpcorch.train.models.gpt`): learned positions, LayerNorm, GELU MLP,
    head tied to the token embedding."""

    kind: Literal["gpt"] = "gpt"
    layers: int = 2
    heads: int = 2
    width: int = 64
    seq_len: int = 64
    vocab: int = 256
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self):
        check_shape(self)
        if not 0 <= self.dropout < 1:
            raise Invalid("dropout", f"expected 0 <= dropout < 1, got {self.dropout}")


# kind -> config class. A new family adds its config class here and its entry in
# hpcorch.train.models; ModelConfig becomes the union of the classes.
MODEL_CONFIGS: dict[str, type] = {"gpt": GPTConfig}
DEFAULT_KIND = "gpt"
ModelConfig = GPTConfig


def default_model():
    """The config of a job that names no model: the default family's defaults."""
    return MODEL_CONFIGS[DEFAULT_KIND]()


def recorded(cfg) -> dict:
    """``cfg`` as checkpoints record it: without ``kind`` when it is the default, so that the
    records of runs from before there were families (which had no ``kind``) still match."""
    fields = dict(vars(cfg))
    if fields.get("kind") == DEFAULT_KIND:
        del fields["kind"]
    return fields
