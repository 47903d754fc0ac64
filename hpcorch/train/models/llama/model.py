"""A Llama decoder: pre-RMSNorm blocks, rotary positions, grouped-query causal SDPA attention,
SwiGLU MLP, no biases; an output layer of its own unless ``cfg.tied``.

Parameter names are Meta's reference ones (``tok_embeddings``, ``blocks.<i>.attention.wq``,
``feed_forward.w1/w3/w2``, ``norm``, ``output``), and the numbers are Hugging Face's
``LlamaForCausalLM``'s: RMSNorm in fp32 (``x * rsqrt(mean(x^2) + eps)``, then times the weight),
rotary embeddings by ``rotate_half`` (each head's two halves, ``inv_freq = 1 / theta^(2i/d)``),
so a Hugging Face checkpoint maps onto this module by renaming alone (no permutation of wq/wk).

Init: linears and the embedding normal(0, 0.02), norms ones (no depth scaling; fine-tuned
checkpoints bring their own weights). The model can be cut into pipeline stages
(:meth:`Llama.keep_only`) under the whole model's parameter names; under tensor parallelism the
linears hold DTensors (:mod:`.parallelize`) and :attr:`Attention.heads` / ``kv_heads`` are this
rank's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hpcorch.spec.model import LlamaConfig
from hpcorch.train.models.decoder import causal_lm_loss, head_and_loss, keep_layers, run_blocks


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 whatever the input's dtype (as Hugging Face's)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_tables(cfg: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position up to ``seq_len``, (seq_len, head_dim) in fp32: the angles
    ``pos * inv_freq`` for each half of the head, repeated (Hugging Face's layout)."""
    d = cfg.width // cfg.heads
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    angles = torch.outer(torch.arange(cfg.seq_len, dtype=torch.int64).float(), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (batch, heads, time, head_dim) by the tables' first ``time`` positions."""
    T = x.shape[2]
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query causal self-attention: ``kv_heads`` key/value heads, each serving
    ``heads / kv_heads`` query heads (repeated to whole heads before SDPA)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.heads, self.kv_heads = cfg.heads, cfg.kv_heads  # this rank's (tensor parallelism divides them)
        self.head_dim = cfg.width // cfg.heads
        self.wq = nn.Linear(cfg.width, cfg.heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.width, cfg.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.width, cfg.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * self.head_dim, cfg.width, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        d = self.head_dim
        q = self.wq(x).view(B, T, self.heads, d).transpose(1, 2)
        k = self.wk(x).view(B, T, self.kv_heads, d).transpose(1, 2)
        v = self.wv(x).view(B, T, self.kv_heads, d).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).contiguous().view(B, T, self.heads * d))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)`` (w1 the gate, w3 the up, w2 the down projection)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.width, cfg.intermediate, bias=False)
        self.w3 = nn.Linear(cfg.width, cfg.intermediate, bias=False)
        self.w2 = nn.Linear(cfg.intermediate, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    """The whole model, or (after :meth:`keep_only`) one pipeline stage of it."""

    def __init__(self, cfg: LlamaConfig, activation_checkpointing: bool = False, loss_chunk: int = 0):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.loss_chunk = loss_chunk  # tokens per chunk of the loss (decoder.head_and_loss); 0: whole
        # A last pipeline stage whose pipeline applies the output layer in its loss (lm_loss), so
        # that the loss can run in chunks: the stage returns the final norm's output.
        self.head_in_loss = False
        self.is_stage = False  # a pipeline stage: forward returns one tensor, no loss
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(cfg.vocab, cfg.width)
        # Keyed by the layer index, so that a stage holding layers 4..7 still names them blocks.4..7.
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.layers)})
        self.norm: RMSNorm | None = RMSNorm(cfg.width, cfg.norm_eps)
        self.output: nn.Linear | None = nn.Linear(cfg.width, cfg.vocab, bias=False)
        # Tables, not weights: rebuilt from the config, in no checkpoint.
        cos, sin = rotary_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if cfg.tied:
            self.output.weight = self.tok_embeddings.weight

    def keep_only(self, layers: range, first: bool, last: bool) -> Llama:
        """Make this model the pipeline stage that runs ``layers``: the embedding stays only on
        the ``first`` stage, the final norm and output layer only on the ``last``. A tied output
        layer keeps its own copy when the embedding leaves (kept equal by summing the two
        gradients, :meth:`hpcorch.train.parallelize.pipeline.Pipeline.sync_tied_grads`)."""
        self.is_stage = True
        keep_layers(self.blocks, layers)
        if not first:
            self.tok_embeddings = None
        if not last:
            self.norm = self.output = None
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """``(logits, loss)`` for the whole model (loss None without targets; logits None when
        the loss ran in chunks); a pipeline stage returns only its output (hidden states, or
        logits from the last stage; its final norm's output with :attr:`head_in_loss`)."""
        x = self.tok_embeddings(idx) if self.tok_embeddings is not None else idx
        x = run_blocks(self.blocks, x, self.rope_cos, self.rope_sin,
                       checkpointing=self.activation_checkpointing and self.training)
        if self.output is None:
            return x
        if self.is_stage and self.head_in_loss:
            return self.norm(x)
        if self.is_stage or targets is None:
            logits = self.output(self.norm(x))
            return logits if self.is_stage else (logits, None)
        return head_and_loss(self.norm(x), self.output, targets, self.loss_chunk)

    def lm_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the final norm's output ``hidden`` (a last pipeline stage's, with
        :attr:`head_in_loss`): the output layer and the cross-entropy, in chunks above
        ``loss_chunk`` tokens."""
        return head_and_loss(hidden, self.output, targets, self.loss_chunk)[1]

    @staticmethod
    def tied_weights(part: Llama) -> tuple[nn.Parameter | None, nn.Parameter | None]:
        """This part's copies of the tied weight (embedding on the first stage, output layer on
        the last); both None when the model is untied."""
        if not part.cfg.tied:
            return None, None
        return (part.tok_embeddings.weight if part.tok_embeddings is not None else None,
                part.output.weight if part.output is not None else None)

    loss = staticmethod(causal_lm_loss)
