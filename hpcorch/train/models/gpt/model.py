"""A GPT-style decoder: pre-LayerNorm blocks, causal SDPA attention, GELU MLP (exact, or GPT-2's
tanh approximation: ``activation``), tied embeddings.

The model can be cut into pipeline stages (:meth:`GPT.keep_only`): a stage keeps the blocks it
runs under their own names (``blocks.4`` stays ``blocks.4``), the first stage the embeddings and
the last one the final norm and the head, so every stage's parameter names are the whole model's.
Under tensor parallelism the parameters are DTensors (:mod:`.parallelize`); the modules
compute on their local shards and :attr:`CausalSelfAttention.heads` is this rank's head count.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hpcorch.spec.model import GPTConfig
from hpcorch.train.models.decoder import causal_lm_loss, head_and_loss, keep_layers, run_blocks


class QKV(nn.Module):
    """The q, k and v projections as one weight of shape (3, width, width) (and bias (3, width)).

    The same numbers as one ``nn.Linear(width, 3 * width)`` (the weight is that Linear's, viewed
    in three), but tensor parallelism can shard dimension 1, which gives each rank whole heads of
    q, k and v as one contiguous DTensor shard that checkpoints can reshard. Under tensor
    parallelism the weight is a DTensor and ``forward`` computes on the local shard; the style
    in :mod:`.parallelize` hands it a local input whose gradient is reduced over tp."""

    def __init__(self, width: int, bias: bool):
        super().__init__()
        # Built as the Linear it replaces, so that its default init draws the same random
        # numbers (the weights of every later module, too, stay what they were).
        linear = nn.Linear(width, 3 * width, bias=bias)
        self.weight = nn.Parameter(linear.weight.detach().view(3, width, width))
        self.bias = nn.Parameter(linear.bias.detach().view(3, width)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if hasattr(w, "to_local"):  # a DTensor (tensor parallel): this rank's heads
            w, b = w.to_local(), (b.to_local() if b is not None else None)
        return F.linear(x, w.reshape(-1, w.shape[-1]), None if b is None else b.reshape(-1))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads  # this rank's heads (tensor parallelism divides it)
        self.dropout = cfg.dropout
        self.qkv = QKV(cfg.width, cfg.bias)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        qkv = self.qkv(x)
        C = qkv.shape[-1] // 3  # the local width: width / tp
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.width, 4 * cfg.width, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.width, cfg.width, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.width, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """The whole model, or (after :meth:`keep_only`) one pipeline stage of it."""

    def __init__(self, cfg: GPTConfig, activation_checkpointing: bool = False, loss_chunk: int = 0):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.loss_chunk = loss_chunk  # tokens per chunk of the loss (decoder.head_and_loss); 0: whole
        # A last pipeline stage whose pipeline applies the output layer in its loss (lm_loss), so
        # that the loss can run in chunks: the stage returns the final norm's output.
        self.head_in_loss = False
        self.is_stage = False  # a pipeline stage: forward returns one tensor, no loss
        self.wte: nn.Embedding | None = nn.Embedding(cfg.vocab, cfg.width)
        self.wpe: nn.Embedding | None = nn.Embedding(cfg.seq_len, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        # Keyed by the layer index, so that a stage holding layers 4..7 still names them blocks.4..7.
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.layers)})
        self.ln_f: nn.LayerNorm | None = nn.LayerNorm(cfg.width, bias=cfg.bias)
        self.head: nn.Linear | None = nn.Linear(cfg.width, cfg.vocab, bias=False)
        self.head.weight = self.wte.weight  # tied embeddings
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding, QKV)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, (nn.Linear, QKV)) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def keep_only(self, layers: range, first: bool, last: bool) -> GPT:
        """Make this model the pipeline stage that runs ``layers``: the embeddings stay only on
        the ``first`` stage, the final norm and head only on the ``last``. The head keeps its
        own copy of the tied weight when the embedding leaves (kept equal by summing the two
        gradients, :func:`hpcorch.train.parallelize.pipeline.sync_tied_grads`)."""
        self.is_stage = True
        keep_layers(self.blocks, layers)
        if not first:
            self.wte = self.wpe = None
        if not last:
            self.ln_f = self.head = None
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """``(logits, loss)`` for the whole model (loss None without targets; logits None when
        the loss ran in chunks); a pipeline stage returns only its output (hidden states, or
        logits from the last stage; its final norm's output with :attr:`head_in_loss`)."""
        if self.wte is not None:
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.drop(self.wte(idx) + self.wpe(pos))
        else:
            x = idx  # the previous stage's hidden states
        x = run_blocks(self.blocks, x, checkpointing=self.activation_checkpointing and self.training)
        if self.head is None:
            return x
        if self.is_stage and self.head_in_loss:
            return self.ln_f(x)
        if self.is_stage or targets is None:
            logits = self.head(self.ln_f(x))
            return logits if self.is_stage else (logits, None)
        return head_and_loss(self.ln_f(x), self.head, targets, self.loss_chunk)

    def lm_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the final norm's output ``hidden`` (a last pipeline stage's, with
        :attr:`head_in_loss`): the output layer and the cross-entropy, in chunks above
        ``loss_chunk`` tokens."""
        return head_and_loss(hidden, self.head, targets, self.loss_chunk)[1]

    @staticmethod
    def tied_weights(part: GPT) -> tuple[nn.Parameter | None, nn.Parameter | None]:
        """This part's copies of the tied weight: the embedding's (first stage) and the head's
        (last stage); one parameter when the part holds both."""
        return (part.wte.weight if part.wte is not None else None,
                part.head.weight if part.head is not None else None)

    loss = staticmethod(causal_lm_loss)


def legacy_state(state: dict, width: int) -> dict:
    """Checkpoints written before the q, k, v weight became (3, width, width) held it as
    (3 * width, width) (and the bias as (3 * width,)): view such tensors in the new shape.
    Works on model state dicts and on (nested) optimizer state dicts keyed by parameter name."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            value = legacy_state(value, width) if "attn.qkv." not in str(key) else \
                {k: _qkv_view(v, width) for k, v in value.items()}
        elif "attn.qkv." in str(key):
            value = _qkv_view(value, width)
        out[key] = value
    return out


def _qkv_view(value, width: int):
    if isinstance(value, torch.Tensor) and value.dim() in (1, 2) and value.shape[0] == 3 * width:
        return value.view(3, width, *value.shape[1:])
    return value


def export_tensor(name: str, tensor):
    """For files read outside hpcorch: q, k and v as one ``nn.Linear(width, 3 * width)`` holds
    them (the trainer keeps them as ``(3, width, width)`` so that tensor parallelism splits whole
    heads): the same bytes."""
    if name.endswith("attn.qkv.weight") and tensor.dim() == 3:
        return tensor.reshape(-1, tensor.shape[-1])
    if name.endswith("attn.qkv.bias") and tensor.dim() == 2:
        return tensor.reshape(-1)
    return tensor
