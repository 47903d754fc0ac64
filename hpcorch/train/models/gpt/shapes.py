"""The GPT's arithmetic without torch: parameters, FLOPs per token, and the tensor shapes and
saved activations the planner's memory estimate walks (:mod:`hpcorch.plan.estimate.memory`).

The shapes follow :mod:`.model` and the tensor-parallel plan of :mod:`.parallelize`: q/k/v and
the MLP's ``fc`` column-wise, the projections row-wise, the embedding on vocabulary rows; norms,
the row-wise biases and the position embedding whole.
"""
from __future__ import annotations

from hpcorch.spec.model import GPTConfig
from hpcorch.train.models.spec import BlockActivations, Shape


class GPTShapes:
    """:class:`hpcorch.train.models.spec.Shapes` of the GPT."""

    def num_params(self, cfg: GPTConfig, include_position: bool = False) -> int:
        """Parameters of the model (the head is tied to the token embedding)."""
        w = cfg.width
        norm = 2 * w if cfg.bias else w
        block = 12 * w * w + 2 * norm + ((3 * w + w + 4 * w + w) if cfg.bias else 0)
        total = cfg.vocab * w + cfg.layers * block + norm
        return total + (cfg.seq_len * w if include_position else 0)

    def flops_per_token(self, cfg: GPTConfig) -> int:
        """Training FLOPs per token: 6N for the matmuls plus the attention term (as PaLM, nanoGPT)."""
        return 6 * self.num_params(cfg) + 12 * cfg.layers * cfg.width * cfg.seq_len

    def block_tensors(self, cfg: GPTConfig, tp: int) -> list[Shape]:
        w, bias = cfg.width, cfg.bias
        shapes = [(w,), (3, w // tp, w), (w, w // tp), (w,), (4 * w // tp, w), (w, 4 * w // tp)]
        if bias:
            shapes += [(w,), (3, w // tp), (w,), (w,), (4 * w // tp,), (w,)]
        return shapes

    def root_tensors(self, cfg: GPTConfig, tp: int, first: bool, last: bool) -> list[Shape]:
        """Embeddings (first stage), final norm and the head (last stage; tied to the embedding
        when the stage holds both, else its own copy)."""
        w = cfg.width
        shapes: list[Shape] = []
        if first:
            shapes += [(cfg.vocab // tp, w), (cfg.seq_len, w)]
        if last:
            shapes += [(w,)] + ([(w,)] if cfg.bias else [])
            if not first:
                shapes.append((cfg.vocab // tp, w))
        return shapes

    def widest_block_grad(self, cfg: GPTConfig, tp: int) -> Shape:
        """The MLP's output projection (its backward is the block's widest moment)."""
        return self.block_tensors(cfg, tp)[5]

    def activations(self, cfg: GPTConfig, bf16: bool) -> BlockActivations:
        """Pre-LN block, SDPA attention saving q, k, v, its output and the log-sum-exp, a 4x
        GELU MLP; under bf16 autocast the matmuls' inputs are saved in bf16."""
        ln_out, resid, mm = (4, 8, 24) if bf16 else (8, 8, 48)
        return BlockActivations(norm_out=ln_out, residual=resid, sharded=mm, heads=cfg.heads,
                                norm_stats=4, widest=4)


SHAPES = GPTShapes()
