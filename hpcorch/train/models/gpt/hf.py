"""The GPT as Hugging Face transformers' ``GPT2LMHeadModel`` (``model_type: gpt2``).

What differs besides the names: GPT-2's ``c_attn``, ``c_proj`` and ``c_fc`` are ``Conv1D``
layers, whose weights are ``[in, out]`` (an ``nn.Linear``'s transposed); q, k and v are one
``[width, 3 * width]`` matrix (ours ``(3, width, width)``, the same numbers once flattened);
GPT-2 always has biases, so a model without them (``bias: false``) gets zeros, and one whose
biases are all zero comes back as ``bias: false``. The MLP's GELU is ``activation``: exact,
transformers' ``"gelu"``, or ``gelu_tanh``, the tanh approximation GPT-2's own checkpoints name
``"gelu_new"`` (``"gelu_pytorch_tanh"`` too); any other activation is refused. LayerNorm's
epsilon is torch's default, 1e-5, as GPT-2's. The head is tied: written once, as the embedding.

No torch at import (the registry may look the mapping up on a torch-free path): tensors are
only reshaped, transposed and, for the missing biases, made with ``new_zeros``.
"""
from __future__ import annotations

from hpcorch.spec.model import GPTConfig
from hpcorch.train.models.spec import HFMapping

# Our activation -> transformers' name (written) and the names read as it.
ACTIVATIONS = {"gelu": ("gelu",), "gelu_tanh": ("gelu_new", "gelu_pytorch_tanh")}
LN_EPS = 1e-5
# (our module under blocks.<i>, GPT-2's under h.<i>, output width in widths): the Conv1D layers.
LINEARS = (("attn.qkv", "attn.c_attn", 3), ("attn.proj", "attn.c_proj", 1),
           ("mlp.fc", "mlp.c_fc", 4), ("mlp.proj", "mlp.c_proj", 1))
NORMS = (("ln1", "ln_1"), ("ln2", "ln_2"))
# Buffers older GPT-2 files hold (the causal mask), not parameters.
BUFFERS = (".attn.bias", ".attn.masked_bias")


def _pairs(layers: int) -> list[tuple[str, str, int]]:
    """(our prefix, theirs, output width multiple or 0 for a norm) of every module with a weight
    and a bias."""
    pairs = [(f"blocks.{i}.{o}", f"transformer.h.{i}.{t}", 0) for i in range(layers) for o, t in NORMS]
    pairs += [(f"blocks.{i}.{o}", f"transformer.h.{i}.{t}", m) for i in range(layers) for o, t, m in LINEARS]
    return pairs + [("ln_f", "transformer.ln_f", 0)]


def to_hf(state: dict, cfg: GPTConfig) -> tuple[dict, dict]:
    """``config.json``'s dict and GPT-2's tensors of a canonical state."""
    w, wte = cfg.width, state["wte.weight"]
    tensors = {"transformer.wte.weight": wte, "transformer.wpe.weight": state["wpe.weight"]}
    for ours, theirs, mult in _pairs(cfg.layers):
        weight = state[f"{ours}.weight"]
        tensors[f"{theirs}.weight"] = weight.reshape(-1, weight.shape[-1]).t() if mult else weight
        bias = state.get(f"{ours}.bias")
        tensors[f"{theirs}.bias"] = bias.reshape(-1) if bias is not None else wte.new_zeros((mult or 1) * w)
    config = {"architectures": [MAPPING.architecture], "model_type": MAPPING.model_type,
              "vocab_size": cfg.vocab, "n_positions": cfg.seq_len, "n_embd": w, "n_layer": cfg.layers,
              "n_head": cfg.heads, "n_inner": None, "activation_function": ACTIVATIONS[cfg.activation][0],
              "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
              "layer_norm_epsilon": LN_EPS, "initializer_range": 0.02, "scale_attn_weights": True,
              "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": None,
              "torch_dtype": str(wte.dtype).removeprefix("torch.")}
    return config, tensors


def from_hf(config: dict, tensors: dict, like: GPTConfig | None = None) -> tuple[GPTConfig, dict]:
    """The config and canonical state of a GPT-2 checkpoint (names with or without the
    ``transformer.`` prefix, as GPT-2's own files have them); a ValueError for what this model
    cannot compute. Biases all zero fit either ``bias`` setting: ``like``'s, else none."""
    w = config["n_embd"]
    act, eps, inner = (config.get("activation_function", "gelu_new"), config.get("layer_norm_epsilon", 1e-5),
                       config.get("n_inner"))
    ours = next((k for k, names in ACTIVATIONS.items() if act in names), None)
    known = ", ".join(repr(n) for names in ACTIVATIONS.values() for n in names)
    checks = ((ours is not None, f"activation_function {act!r} (hpcorch's GPT computes {known})"),
              (eps == LN_EPS, f"layer_norm_epsilon {eps} (hpcorch's GPT uses {LN_EPS})"),
              (inner in (None, 4 * w), f"n_inner {inner} (hpcorch's GPT uses 4 * n_embd = {4 * w})"))
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise ValueError("unsupported GPT-2 config: " + "; ".join(problems))
    theirs = {("transformer." + k if not k.startswith(("transformer.", "lm_head.")) else k): t
              for k, t in tensors.items() if not k.endswith(BUFFERS)}
    bias = any(bool(t.any()) for k, t in theirs.items() if k.endswith(".bias")) or bool(like and like.bias)
    cfg = GPTConfig(layers=config["n_layer"], heads=config["n_head"], width=w, seq_len=config["n_positions"],
                    vocab=config["vocab_size"], dropout=config.get("resid_pdrop", 0.0), bias=bias, activation=ours)
    state = {"wte.weight": theirs["transformer.wte.weight"], "wpe.weight": theirs["transformer.wpe.weight"]}
    for ours, their, mult in _pairs(cfg.layers):
        weight, b = theirs[f"{their}.weight"], theirs[f"{their}.bias"]
        if mult:  # Conv1D [in, out] -> Linear [out, in]; q, k, v as (3, width, width)
            weight = weight.t()
        if mult == 3:
            weight, b = weight.reshape(3, w, w), b.reshape(3, w)
        state[f"{ours}.weight"] = weight
        if bias:
            state[f"{ours}.bias"] = b
    return cfg, state


def fixed(cfg: GPTConfig) -> dict:
    """What a checkpoint fixes of the config: all but dropout."""
    return {k: getattr(cfg, k) for k in ("layers", "heads", "width", "seq_len", "vocab", "bias", "activation")}


MAPPING = HFMapping(model_type="gpt2", architecture="GPT2LMHeadModel", to_hf=to_hf, from_hf=from_hf, fixed=fixed)
