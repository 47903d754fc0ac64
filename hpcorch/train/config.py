"""The model's shape and its arithmetic (parameters, FLOPs), without importing torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    layers: int = 2
    heads: int = 2
    width: int = 64
    seq_len: int = 64
    vocab: int = 256
    dropout: float = 0.0
    bias: bool = False

    @classmethod
    def from_spec(cls, spec) -> "GPTConfig":
        """From a job's ``trainer.model`` section."""
        return cls(layers=spec.layers, heads=spec.heads, width=spec.width, seq_len=spec.seq_len,
                   vocab=spec.vocab, dropout=spec.dropout, bias=spec.bias)

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
