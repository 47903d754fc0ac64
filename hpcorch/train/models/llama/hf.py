"""The Llama family as Hugging Face transformers' ``LlamaForCausalLM`` (``model_type: llama``).

The family's rotary embedding rotates halves (transformers' ``rotate_half``), so q and k need no
permutation and the mapping is names alone (:data:`LAYER_NAMES`); the config keys are renamed
too. No bias anywhere (``attention_bias``/``mlp_bias`` false), SiLU-gated MLP. A tied head is
not written (``tie_word_embeddings``); an untied one is ``lm_head.weight``.

This file is the family's only dependency on transformers' names, and imports neither torch nor
the family's module: the registry finds it by convention (:meth:`ModelSpec.hf`), and the config
class is looked up by kind only when :func:`from_hf` builds one.
"""
from __future__ import annotations

from typing import Any

from hpcorch.train.models.spec import HFMapping

KIND = "llama"
# Per layer: our name under blocks.<i>, transformers' under model.layers.<i>.
LAYER_NAMES = (("attention_norm.weight", "input_layernorm.weight"),
               ("attention.wq.weight", "self_attn.q_proj.weight"),
               ("attention.wk.weight", "self_attn.k_proj.weight"),
               ("attention.wv.weight", "self_attn.v_proj.weight"),
               ("attention.wo.weight", "self_attn.o_proj.weight"),
               ("ffn_norm.weight", "post_attention_layernorm.weight"),
               ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
               ("feed_forward.w3.weight", "mlp.up_proj.weight"),
               ("feed_forward.w2.weight", "mlp.down_proj.weight"))
ROOT_NAMES = (("tok_embeddings.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight"))
HEAD = ("output.weight", "lm_head.weight")
# Our config field -> transformers' config key.
CONFIG_KEYS = (("layers", "num_hidden_layers"), ("heads", "num_attention_heads"),
               ("kv_heads", "num_key_value_heads"), ("width", "hidden_size"),
               ("intermediate", "intermediate_size"), ("rope_theta", "rope_theta"),
               ("norm_eps", "rms_norm_eps"), ("vocab", "vocab_size"),
               ("seq_len", "max_position_embeddings"), ("tied", "tie_word_embeddings"))
# What transformers' config may say that this family does not compute.
FIXED = (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False))


def names(layers: int, tied: bool) -> list[tuple[str, str]]:
    """(our name, transformers') of every tensor a checkpoint holds."""
    pairs = list(ROOT_NAMES) + [(f"blocks.{i}.{o}", f"model.layers.{i}.{t}")
                                for i in range(layers) for o, t in LAYER_NAMES]
    return pairs + ([] if tied else [HEAD])


def config_dict(cfg: Any) -> dict:
    """``config.json``'s dict of a Llama config (any object with the family's fields)."""
    fields = {theirs: getattr(cfg, ours) for ours, theirs in CONFIG_KEYS}
    if fields["num_key_value_heads"] is None:  # no grouped-query attention: one kv head per head
        fields["num_key_value_heads"] = cfg.heads
    return {"architectures": [MAPPING.architecture], "model_type": MAPPING.model_type, **fields,
            "head_dim": cfg.width // cfg.heads, "rope_scaling": None, **dict(FIXED),
            "bos_token_id": None, "eos_token_id": None}


def config_fields(config: dict) -> dict:
    """Our config's fields of transformers' ``config.json`` dict; a ValueError for what the family
    does not compute (a non-default rope scaling, biases, another activation)."""
    rope = config.get("rope_parameters") or {}  # transformers 5 keeps rope_theta in here
    problems = [f"{key} {config[key]!r} (expected {want!r})" for key, want in FIXED
                if key in config and config[key] != want]
    scaling = config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default" or scaling.get("rope_type", "default") != "default":
        problems.append("a rope scaling other than the default")
    if config.get("head_dim") not in (None, config["hidden_size"] // config["num_attention_heads"]):
        problems.append(f"head_dim {config['head_dim']} (expected hidden_size / num_attention_heads)")
    if problems:
        raise ValueError("unsupported Llama config: " + "; ".join(problems))
    defaults = {"num_key_value_heads": config["num_attention_heads"], "rope_theta": rope.get("rope_theta", 10000.0),
                "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    return {ours: config.get(theirs, defaults.get(theirs)) if theirs in defaults else config[theirs]
            for ours, theirs in CONFIG_KEYS}


def to_hf(state: dict, cfg: Any) -> tuple[dict, dict]:
    """``config.json``'s dict and transformers' tensors of a canonical state."""
    return config_dict(cfg), {theirs: state[ours] for ours, theirs in names(cfg.layers, cfg.tied)}


def state_of(tensors: dict, layers: int, tied: bool) -> dict:
    """Our canonical state of transformers' tensors (a tied file's extra ``lm_head`` ignored)."""
    return {ours: tensors[theirs] for ours, theirs in names(layers, tied)}


def from_hf(config: dict, tensors: dict, like: Any = None) -> tuple[Any, dict]:
    """The family's config and canonical state of a ``LlamaForCausalLM`` checkpoint (``like``:
    unused, a Llama file leaves nothing open)."""
    from hpcorch.spec.model import MODEL_CONFIGS

    fields = config_fields(config)
    return MODEL_CONFIGS[KIND](kind=KIND, **fields), state_of(tensors, fields["layers"], fields["tied"])


def fixed(cfg: Any) -> dict:
    """What a checkpoint fixes of the config: the fields transformers' config holds (no kv_heads
    given: one per head), whatever else the family's config adds."""
    fields = {ours: getattr(cfg, ours) for ours, _ in CONFIG_KEYS}
    fields["kv_heads"] = fields["kv_heads"] or cfg.heads
    return fields


MAPPING = HFMapping(model_type="llama", architecture="LlamaForCausalLM", to_hf=to_hf, from_hf=from_hf, fixed=fixed)
