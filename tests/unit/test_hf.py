"""The Hugging Face form of the model families (hpcorch.train.models.<kind>.hf) and its folders
(hpcorch.train.checkpoint.hf), against real transformers: no trainer, models built in-process."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hfhelp import load_hf, max_logit_diff  # noqa: E402

from hpcorch.spec.model import GPTConfig  # noqa: E402
from hpcorch.train.checkpoint.hf import (  # noqa: E402
    INDEX,
    HFFolderError,
    init_state,
    parse_size,
    read_config,
    read_tensors,
    write_folder,
)
from hpcorch.train.models import get_model_spec  # noqa: E402

GPT = get_model_spec("gpt")


def gpt_state(cfg: GPTConfig, bias_noise: bool = True) -> tuple[torch.nn.Module, dict]:
    """A GPT with random weights (random biases too, where it has them) and its canonical state."""
    torch.manual_seed(0)
    model = GPT.parts().build(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and bias_noise or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    state = {k: v for k, v in model.state_dict().items() if k != GPT.tied[1]}
    return model, state


def export_gpt(tmp_path, cfg: GPTConfig, max_shard_size="5GB"):
    model, state = gpt_state(cfg)
    config, tensors = GPT.hf().to_hf(state, cfg)
    write_folder(tmp_path / "hf", config, tensors, max_shard_size)
    return model, state, tmp_path / "hf"


@pytest.mark.parametrize("bias, activation, theirs_name", [(False, "gelu", "gelu"), (True, "gelu", "gelu"),
                                                        (True, "gelu_tanh", "gelu_new")])
def test_gpt_loads_in_transformers_with_the_same_logits(tmp_path, bias, activation, theirs_name):
    cfg = GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64, bias=bias, activation=activation)
    ours, _, folder = export_gpt(tmp_path, cfg)
    theirs = load_hf(folder)
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    assert theirs.config.activation_function == theirs_name and theirs.config.tie_word_embeddings
    assert max_logit_diff(ours, theirs, cfg.vocab, cfg.seq_len) < 1e-5


@pytest.mark.parametrize("bias", [False, True])
def test_gpt_round_trips_through_the_folder(tmp_path, bias):
    cfg = GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64, bias=bias)
    _, state, folder = export_gpt(tmp_path, cfg)
    back = init_state(folder, cfg, GPT)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_a_sharded_folder_loads(tmp_path):
    cfg = GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64)
    ours, state, folder = export_gpt(tmp_path, cfg, max_shard_size="10KB")
    files = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert not (folder / "model.safetensors").exists() and (folder / INDEX).is_file()
    assert max_logit_diff(ours, load_hf(folder), cfg.vocab, cfg.seq_len) < 1e-5
    assert sorted(init_state(folder, cfg, GPT)) == sorted(state)
    # Writing again unsharded leaves no stale shard behind.
    write_folder(folder, read_config(folder), read_tensors(folder))
    assert [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"]


def test_init_state_names_the_problem(tmp_path):
    cfg = GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64)
    _, _, folder = export_gpt(tmp_path, cfg)
    with pytest.raises(HFFolderError, match="no such folder"):
        init_state(tmp_path / "nope", cfg, GPT)
    with pytest.raises(HFFolderError, match="trainer.model.width is 64 but the checkpoint's is 32"):
        init_state(folder, GPTConfig(layers=2, heads=2, width=64, seq_len=16, vocab=64), GPT)
    # all-zero biases fit a model with biases too
    with_bias = init_state(folder, GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64, bias=True), GPT)
    assert not with_bias["blocks.0.attn.qkv.bias"].any() and with_bias["blocks.0.attn.qkv.bias"].shape == (3, 32)
    # dropout is a training choice, not a shape
    assert init_state(folder, GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64, dropout=0.1), GPT)
    config = read_config(folder)
    (folder / "config.json").write_text(__import__("json").dumps({**config, "model_type": "llama"}))
    with pytest.raises(HFFolderError, match="model_type 'llama'.*'gpt2'"):
        init_state(folder, cfg, GPT)
    (folder / "config.json").write_text(__import__("json").dumps({**config, "activation_function": "gelu_new"}))
    with pytest.raises(HFFolderError, match="trainer.model.activation is gelu but the checkpoint's is gelu_tanh"):
        init_state(folder, cfg, GPT)
    (folder / "config.json").write_text(__import__("json").dumps({**config, "activation_function": "relu"}))
    with pytest.raises(HFFolderError, match="activation_function 'relu'.*'gelu_new'"):
        init_state(folder, cfg, GPT)
    (folder / "model.safetensors").unlink()
    (folder / "config.json").write_text(__import__("json").dumps(config))
    with pytest.raises(HFFolderError, match="holds no model.safetensors"):
        init_state(folder, cfg, GPT)


@pytest.mark.parametrize("damage", ["garbage", "cut short", "bad index", "index names a missing shard"])
def test_a_damaged_weights_file_is_one_line(tmp_path, damage):
    """A weights file that is not safetensors, or cut short, or an index that is no index, is a
    one-line HFFolderError naming the file, never safetensors' own traceback."""
    cfg = GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64)
    sharded = damage.startswith(("bad index", "index"))
    _, _, folder = export_gpt(tmp_path, cfg, max_shard_size="10KB" if sharded else "5GB")
    weights = folder / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"\xff" * 100)
    elif damage == "cut short":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "bad index":
        (folder / INDEX).write_text("[1, 2]")
    else:
        next(folder.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(HFFolderError, match="model|index"):
        init_state(folder, cfg, GPT)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("10kb") == 10**4
    assert parse_size(123) == 123 and parse_size("1.5MB") == 1_500_000
    with pytest.raises(ValueError, match="expected a size"):
        parse_size("lots")


# ----- Llama: the mapping against the family's parameter-name contract ---------------------------

def llama_cfg(tied: bool, kv_heads: int | None = 2) -> SimpleNamespace:
    """A stand-in for the family's config: the contract's fields."""
    return SimpleNamespace(kind="llama", layers=2, heads=4, kv_heads=kv_heads, width=32, intermediate=48,
                           rope_theta=10000.0, norm_eps=1e-5, vocab=64, seq_len=16, tied=tied)


def llama_contract_state(cfg) -> dict:
    """A state dict named and shaped as the contract says the Llama family's module is."""
    w, hd, kv = cfg.width, cfg.width // cfg.heads, cfg.kv_heads or cfg.heads
    gen = torch.Generator().manual_seed(0)
    shapes = {"tok_embeddings.weight": (cfg.vocab, w), "norm.weight": (w,)}
    for i in range(cfg.layers):
        b = f"blocks.{i}."
        shapes |= {b + "attention_norm.weight": (w,), b + "attention.wq.weight": (cfg.heads * hd, w),
                   b + "attention.wk.weight": (kv * hd, w), b + "attention.wv.weight": (kv * hd, w),
                   b + "attention.wo.weight": (w, cfg.heads * hd), b + "ffn_norm.weight": (w,),
                   b + "feed_forward.w1.weight": (cfg.intermediate, w),
                   b + "feed_forward.w3.weight": (cfg.intermediate, w),
                   b + "feed_forward.w2.weight": (w, cfg.intermediate)}
    if not cfg.tied:
        shapes["output.weight"] = (cfg.vocab, w)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


@pytest.mark.parametrize("tied", [False, True])
def test_llama_mapping_fits_transformers_llama(tied):
    """The contract's state, mapped, is exactly what ``LlamaForCausalLM`` holds (names and shapes:
    ``load_state_dict`` strict), and maps back to itself."""
    from hpcorch.train.models.llama import hf

    cfg = llama_cfg(tied)
    state = llama_contract_state(cfg)
    config, tensors = hf.to_hf(state, cfg)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    assert (hf_cfg.num_key_value_heads, hf_cfg.tie_word_embeddings, hf_cfg.hidden_act) == (2, tied, "silu")
    model = transformers.LlamaForCausalLM(hf_cfg)
    expected = {k for k in model.state_dict() if not (tied and k == "lm_head.weight")}
    assert set(tensors) == expected
    model.load_state_dict(tensors, strict=not tied)
    assert hf.config_fields(config) == {k: v for k, v in vars(cfg).items() if k != "kind"}
    back = hf.state_of(tensors, cfg.layers, cfg.tied)
    assert sorted(back) == sorted(state) and all(back[k] is state[k] for k in state)


def test_llama_without_grouped_query_attention_writes_one_kv_head_per_head():
    from hpcorch.train.models.llama import hf

    config = hf.config_dict(llama_cfg(tied=True, kv_heads=None))
    assert config["num_key_value_heads"] == 4
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        hf.config_fields({**config, "hidden_act": "gelu"})


def llama_family():
    """The Llama family, or skip: it arrives on its own branch (hpcorch.train.models.llama)."""
    try:
        return get_model_spec("llama")
    except ValueError:
        pytest.skip("the llama family is not registered on this branch (trainer.model.kind: llama)")


@pytest.mark.parametrize("tied", [False, True])
def test_llama_loads_in_transformers_with_the_same_logits(tmp_path, tied):
    family = llama_family()
    cfg = family.config_cls(kind="llama", layers=2, heads=4, kv_heads=2, width=32, intermediate=48,
                            vocab=64, seq_len=16, tied=tied)
    torch.manual_seed(0)
    ours = family.parts().build(cfg)
    state = {k: v.detach() for k, v in ours.named_parameters()}  # a tied weight once, buffers left out
    config, tensors = family.hf().to_hf(state, cfg)
    write_folder(tmp_path, config, tensors)
    assert max_logit_diff(ours, load_hf(tmp_path), cfg.vocab, cfg.seq_len) < 1e-5
    back = init_state(tmp_path, cfg, family)
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_a_family_without_an_hf_file_says_so():
    from hpcorch.train.models.spec import ModelSpec

    spec = ModelSpec(kind="nothere", config_cls=object, shapes=None, load_parts=lambda: None)
    with pytest.raises(ValueError, match="'nothere' has no Hugging Face form"):
        spec.hf()


def test_llama_fixed_fields_spell_out_the_kv_heads_default():
    from hpcorch.train.models.llama import hf

    assert hf.fixed(llama_cfg(tied=True, kv_heads=None))["kv_heads"] == 4
    cfg = llama_cfg(tied=False)
    assert hf.fixed(cfg) == hf.config_fields(hf.config_dict(cfg))


def test_init_from_must_name_a_folder(repo):
    from hpcorch.errors import ConfigError
    from hpcorch.spec.job import load_job

    with pytest.raises(ConfigError, match="trainer.init_from: expected a folder"):
        load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.init_from= "])
    assert load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.init_from=/x/hf"]).trainer.init_from == "/x/hf"


@pytest.mark.parametrize("theirs_name, activation", [("gelu", "gelu"), ("gelu_new", "gelu_tanh")])
def test_a_gpt2_folder_saved_by_transformers_inits_our_gpt(tmp_path, theirs_name, activation):
    """The other direction: ``save_pretrained`` of a (random) GPT2LMHeadModel, exact GELU or
    GPT-2's own ``gelu_new``, read by ``trainer.init_from``'s code gives our model
    transformers' logits."""
    from hpcorch.train.parallelize.build import load_whole

    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=16, vocab_size=64, activation_function=theirs_name,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    theirs.save_pretrained(tmp_path)
    cfg = GPTConfig(layers=2, heads=2, width=32, seq_len=16, vocab=64, bias=True, activation=activation)
    ours = GPT.parts().build(cfg)
    load_whole(ours, init_state(tmp_path, cfg, GPT), GPT.tied, "test")
    assert max_logit_diff(ours, theirs, cfg.vocab, cfg.seq_len) < 1e-5


@pytest.mark.parametrize("tied", [False, True])
def test_a_llama_folder_saved_by_transformers_reads_back(tmp_path, tied):
    """``save_pretrained`` of a LlamaForCausalLM (transformers' own config.json, rope included):
    our config fields and the contract's state come back."""
    from hpcorch.train.models.llama import hf

    cfg = llama_cfg(tied)
    config = hf.config_dict(cfg)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **{k: v for k, v in config.items() if k not in ("architectures", "model_type")}))
    model.save_pretrained(tmp_path)
    saved = read_config(tmp_path)
    assert hf.config_fields(saved) == {k: v for k, v in vars(cfg).items() if k != "kind"}
    state = hf.state_of(read_tensors(tmp_path), cfg.layers, cfg.tied)
    assert sorted(state) == sorted(llama_contract_state(cfg))
    assert torch.equal(state["blocks.1.feed_forward.w1.weight"], model.model.layers[1].mlp.gate_proj.weight)
