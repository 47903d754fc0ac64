"""The model's shape and its arithmetic (parameters, FLOPs), without importing torch."""
from __future__ import annotations

from dataclasses import dataclass

from hpcorch.spec.schema import Invalid, check_positive

# Far above any model (the largest have a few hundred), far below a typo that makes the
# planner, which walks the layers, take minutes and gigabytes.
MAX_LAYERS = 10_000


@dataclass(frozen=True)
class GPTConfig:
    """The model's shape; also the ``trainer.model`` section of a job spec."""

    layers: int = 2
    heads: int = 2
    width: int = 64
    seq_len: int = 64
    vocab: int = 256
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self):
        check_positive(self, "layers", "heads", "width", "seq_len", "vocab")
        if self.layers > MAX_LAYERS:
            raise Invalid("layers", f"expected at most {MAX_LAYERS:,} layers, got {self.layers:,}")
        if self.width % self.heads:
            raise Invalid("width", f"expected a multiple of heads ({self.heads}), got {self.width}")
        if not 0 <= self.dropout < 1:
            raise Invalid("dropout", f"expected 0 <= dropout < 1, got {self.dropout}")

    def num_params(self, include_position: bool = False) -> int:
        """Parameters of the model (the head is tied to the token embedding)."""
        w = self.width
        norm = 2 * w if self.bias else w
        block = 12 * w * w + 2 * norm + ((3 * w + w + 4 * w + w) if self.bias else 0)
        total = self.vocab * w + self.layers * block + norm
        return total + (self.seq_len * w if include_position else 0)

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6N for the matmuls plus the attention term (as PaLM, nanoGPT)."""
        return 6 * self.num_params() + 12 * self.layers * self.width * self.seq_len
