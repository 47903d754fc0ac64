"""The Llama's arithmetic without torch: parameters, FLOPs per token, and the tensor shapes and
saved activations the planner's memory estimate walks (:mod:`hpcorch.plan.estimate.memory`).

The shapes follow :mod:`.model` and the tensor-parallel plan of :mod:`.parallelize`: ``wq``,
``wk``, ``wv``, ``w1`` and ``w3`` column-wise (their output rows split over tp), ``wo`` and
``w2`` row-wise (their input columns split), the token embedding and the output layer on
vocabulary rows; the RMSNorm weights whole.
"""
from __future__ import annotations

from hpcorch.spec.model import LlamaConfig
from hpcorch.train.models.spec import BlockActivations, Shape


def _split(n: int, tp: int) -> int:
    """Rows of ``n`` on the largest tp shard (DTensor shards unevenly: the first ranks hold one more)."""
    return -(-n // tp)


class LlamaShapes:
    """:class:`hpcorch.train.models.spec.Shapes` of the Llama."""

    def num_params(self, cfg: LlamaConfig) -> int:
        """Parameters of the model; the output layer counts once more unless it is ``tied``."""
        w, kv = cfg.width, cfg.kv_heads * (cfg.width // cfg.heads)
        block = 2 * w * w + 2 * w * kv + 3 * w * cfg.intermediate + 2 * w
        return cfg.vocab * w * (1 if cfg.tied else 2) + cfg.layers * block + w

    def flops_per_token(self, cfg: LlamaConfig) -> int:
        """Training FLOPs per token: 6 per parameter of a matmul (the embedding's lookup is none,
        the output layer is one, tied or not) plus the attention term, as the GPT's (PaLM's)."""
        matmul = self.num_params(cfg) - (0 if cfg.tied else cfg.vocab * cfg.width)
        return 6 * matmul + 12 * cfg.layers * cfg.width * cfg.seq_len

    def block_tensors(self, cfg: LlamaConfig, tp: int) -> list[Shape]:
        """attention_norm, wq, wk, wv, wo, ffn_norm, w1, w3, w2 (``nn.Linear`` weights are (out, in))."""
        w, i = cfg.width, cfg.intermediate
        kv = cfg.kv_heads * (w // cfg.heads)
        return [(w,), (_split(w, tp), w), (_split(kv, tp), w), (_split(kv, tp), w), (w, _split(w, tp)),
                (w,), (_split(i, tp), w), (_split(i, tp), w), (w, _split(i, tp))]

    def root_tensors(self, cfg: LlamaConfig, tp: int, first: bool, last: bool) -> list[Shape]:
        """The token embedding (first stage), final norm and output layer (last stage; a tied one
        is the embedding when the stage holds both, else its own copy)."""
        w, rows = cfg.width, _split(cfg.vocab, tp)
        shapes: list[Shape] = [(rows, w)] if first else []
        if last:
            shapes.append((w,))
            if not (cfg.tied and first):
                shapes.append((rows, w))
        return shapes

    def widest_block_grad(self, cfg: LlamaConfig, tp: int) -> Shape:
        """The MLP's down projection ``w2`` (its backward is the block's widest moment)."""
        return self.block_tensors(cfg, tp)[8]

    def activations(self, cfg: LlamaConfig, bf16: bool) -> BlockActivations:
        """Pre-norm block, in widths per token. Each RMSNorm (fp32, as Hugging Face's) keeps its
        input and its normalised values (``residual``: sharded under sequence parallelism) and
        its rstd (``norm_stats``); its output is kept once in fp32, or under autocast cast once
        per matmul that reads it (q, k, v; gate, up: ``norm_out``). Attention keeps the rotated
        q and k (the rotation itself keeps only the shared cos/sin tables; k repeated to whole
        heads when grouped), v, SDPA's output (``wo``'s input, the same memory) and log-sum-exp;
        the SwiGLU MLP its gate and up outputs, the gate's SiLU and their product (four of
        ``intermediate``)."""
        hidden = cfg.intermediate / cfg.width
        matmul = 4 + 4 * hidden  # q, k, v, attention's output; the MLP
        size = 2 if bf16 else 4
        norm_out = 5 * 2 if bf16 else 2 * 4
        return BlockActivations(norm_out=norm_out, residual=2 * (4 + 4), sharded=round(matmul * size),
                                heads=cfg.heads, norm_stats=2, widest=round(2 * hidden))


SHAPES = LlamaShapes()
