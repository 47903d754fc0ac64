"""The model families' configs: the ``trainer.model`` section of a job spec, without torch.

``trainer.model`` is a choice tagged on ``kind`` (:data:`MODEL_CONFIGS`); a file without
``kind`` means :data:`DEFAULT_KIND`, so job files written before there were families still
load. Each family's config is a frozen dataclass with ``kind: Literal[<its kind>]``, whose
``__post_init__`` holds the checks that need no torch. What the rest of hpcorch needs to know
of a family (its module, tensor-parallel plan, pipeline cut, parameter and FLOP counts, the
memory estimate's shapes) is its entry in :mod:`hpcorch.train.models`, found by ``kind``.
"""
from __future__ import annotations

import math
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
    # The MLP's GELU: exact, or the tanh approximation (GPT-2's own checkpoints: "gelu_new").
    activation: Literal["gelu", "gelu_tanh"] = "gelu"

    def __post_init__(self):
        check_shape(self)
        if not 0 <= self.dropout < 1:
            raise Invalid("dropout", f"expected 0 <= dropout < 1, got {self.dropout}")


# Llama's SwiGLU width rule (Meta's reference ``FeedForward``): 2/3 of a 4x MLP, rounded up to a
# multiple of this, so that the matmuls tile well and tensor parallelism divides it.
FFN_MULTIPLE_OF = 256


def llama_intermediate(width: int) -> int:
    """The default FFN hidden size of a Llama of ``width``: ``256 * ceil(8/3 * width / 256)``
    (Llama 2 7B: 4096 -> 11008); released checkpoints that scale it further (Llama 3's
    ``ffn_dim_multiplier``) name theirs explicitly (``intermediate``)."""
    return FFN_MULTIPLE_OF * math.ceil(8 * width / 3 / FFN_MULTIPLE_OF)


@dataclass(frozen=True)
class LlamaConfig:
    """Llama's shape (:mod:`hpcorch.train.models.llama`): RMSNorm, rotary positions (Hugging
    Face's convention), SwiGLU MLP, grouped-query attention, no biases, an output layer of its
    own unless ``tied``. ``kv_heads`` (default: ``heads``, plain multi-head attention) must
    divide ``heads``; ``intermediate`` defaults to :func:`llama_intermediate`. Both defaults
    are resolved here, so a checkpoint records the numbers the model was built with."""

    kind: Literal["llama"] = "llama"
    layers: int = 2
    heads: int = 4
    kv_heads: int | None = None
    width: int = 64
    intermediate: int | None = None
    seq_len: int = 64
    vocab: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tied: bool = False

    def __post_init__(self):
        check_shape(self)
        check_positive(self, "kv_heads", "intermediate")
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.intermediate is None:
            object.__setattr__(self, "intermediate", llama_intermediate(self.width))
        if self.heads % self.kv_heads:
            raise Invalid("kv_heads", f"expected a divisor of heads ({self.heads}): each key/value head "
                                      f"serves a whole group of query heads, got {self.kv_heads}")
        if (self.width // self.heads) % 2:
            raise Invalid("heads", f"expected an even head size (width / heads; rotary embeddings "
                                   f"rotate pairs), got {self.width} / {self.heads} = {self.width // self.heads}")
        if not self.rope_theta > 0:
            raise Invalid("rope_theta", f"expected a positive number, got {self.rope_theta}")
        if not self.norm_eps > 0:
            raise Invalid("norm_eps", f"expected a positive number, got {self.norm_eps}")


# kind -> config class. A new family adds its config class here and its entry in
# hpcorch.train.models; ModelConfig becomes the union of the classes.
MODEL_CONFIGS: dict[str, type] = {"gpt": GPTConfig, "llama": LlamaConfig}
DEFAULT_KIND = "gpt"
ModelConfig = GPTConfig | LlamaConfig


def default_model():
    """The config of a job that names no model: the default family's defaults."""
    return MODEL_CONFIGS[DEFAULT_KIND]()


# Keys added after checkpoints recorded their model, with the value those runs had: a record
# leaves them out at that value, so that older records still match.
LATER_KEYS = {"gpt": {"activation": "gelu"}}


def recorded(cfg) -> dict:
    """``cfg`` as checkpoints record it: without ``kind`` when it is the default, so that the
    records of runs from before there were families (which had no ``kind``) still match; nor
    a later key (:data:`LATER_KEYS`) at the value runs had before it."""
    fields = dict(vars(cfg))
    for key, value in LATER_KEYS.get(cfg.kind, {}).items():
        if fields.get(key) == value:
            del fields[key]
    if fields.get("kind") == DEFAULT_KIND:
        del fields["kind"]
    return fields
