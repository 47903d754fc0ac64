"""The Llama family (``trainer.model.kind: llama``): its config's checks, its torch-free figures
against the module, the tp refusal, and the numbers of Hugging Face's ``LlamaForCausalLM``."""
from __future__ import annotations

import pytest
from conftest import run_cli

from hpcorch.errors import ConfigError
from hpcorch.spec.job import load_job
from hpcorch.spec.model import LlamaConfig, llama_intermediate
from hpcorch.train.models import get_model_spec

TINY = """\
name: tiny
resources: {{nodes: 1, gpus_per_node: 0, tasks_per_node: {tasks}, cpus_per_task: 1, time: "0:10:00"}}
trainer:
  global_batch: 8
  micro_batch: 2
  model: {model}
  parallel: {parallel}
"""


def _job(tmp_path, model: str, parallel: str = "{}", tasks: int = 1):
    path = tmp_path / "job.yaml"
    path.write_text(TINY.format(model=model, parallel=parallel, tasks=tasks))
    return load_job(path)


def test_a_llama_job_loads_with_its_defaults(tmp_path):
    cfg = _job(tmp_path, "{kind: llama, heads: 8, width: 256}").trainer.model
    assert cfg == LlamaConfig(heads=8, width=256)
    assert cfg.kv_heads == 8 and cfg.intermediate == 768 and not cfg.tied
    assert (cfg.rope_theta, cfg.norm_eps) == (10000.0, 1e-5)


def test_the_default_intermediate_is_llamas_rule():
    assert llama_intermediate(4096) == 11008  # Llama 2 7B
    assert llama_intermediate(64) == 256


@pytest.mark.parametrize("model, key, words", [
    ("{kind: llama, heads: 4, kv_heads: 3}", "trainer.model.kv_heads", "divisor of heads (4)"),
    ("{kind: llama, heads: 4, kv_heads: 0}", "trainer.model.kv_heads", "positive"),
    ("{kind: llama, heads: 4, intermediate: -1}", "trainer.model.intermediate", "positive"),
    ("{kind: llama, heads: 4, width: 12}", "trainer.model.heads", "even head size"),
    ("{kind: llama, rope_theta: 0}", "trainer.model.rope_theta", "positive"),
    ("{kind: llama, norm_eps: 0}", "trainer.model.norm_eps", "positive"),
    ("{kind: llama, dropout: 0.1}", "trainer.model.dropout", ""),  # a GPT key is no Llama key
])
def test_bad_llama_keys_are_one_line(tmp_path, model, key, words):
    with pytest.raises(ConfigError) as info:
        _job(tmp_path, model)
    assert info.value.key == key and words in info.value.message and "\n" not in str(info.value)


def test_tp_must_divide_kv_heads(tmp_path):
    _job(tmp_path, "{kind: llama, heads: 8, kv_heads: 2, width: 64}", "{tp: 2}", tasks=2)
    with pytest.raises(ConfigError) as info:
        _job(tmp_path, "{kind: llama, heads: 8, kv_heads: 2, width: 64}", "{tp: 4}", tasks=4)
    assert info.value.key == "trainer.parallel.tp" and "2 kv_heads" in info.value.message
    assert "\n" not in str(info.value)


def test_tp_not_dividing_kv_heads_through_the_cli_is_one_line(repo):
    out = run_cli("plan", repo / "jobs/llama-tiny.yaml", "--set", "trainer.model.kv_heads=1",
                  "--set", "trainer.parallel.tp=2")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if "trainer.parallel.tp" in line]
    assert len(lines) == 1 and "kv_heads" in lines[0], out.stderr


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_the_llama_figures_are_the_module_s(tied, kv_heads):
    """The torch-free arithmetic agrees with the module it describes, tied and untied, MHA/GQA/MQA."""
    cfg = LlamaConfig(layers=3, heads=4, kv_heads=kv_heads, width=32, seq_len=16, vocab=64, tied=tied)
    family = get_model_spec("llama")
    module = family.parts().build(cfg)
    shapes = family.shapes
    assert sum(p.numel() for p in module.parameters()) == shapes.num_params(cfg)
    want = shapes.root_tensors(cfg, 1, True, True) + shapes.block_tensors(cfg, 1) * cfg.layers
    assert sorted(tuple(p.shape) for p in module.parameters()) == sorted(want)
    first, last = family.parts().tied_weights(module)
    assert (first is last is not None) if tied else (first is None and last is None)
    assert family.tied_names(cfg) == (("tok_embeddings.weight", "output.weight") if tied else None)
    matmul = shapes.num_params(cfg) - (0 if tied else 64 * 32)
    assert shapes.flops_per_token(cfg) == 6 * matmul + 12 * 3 * 32 * 16


def test_the_parameter_names_are_the_contract():
    """The names the Hugging Face mapping relies on; the rotary tables are in no state dict."""
    cfg = LlamaConfig(layers=1, heads=4, kv_heads=2, width=32, seq_len=16, vocab=64)
    names = {k: tuple(v.shape) for k, v in get_model_spec("llama").parts().build(cfg).state_dict().items()}
    assert names == {
        "tok_embeddings.weight": (64, 32), "blocks.0.attention_norm.weight": (32,),
        "blocks.0.attention.wq.weight": (32, 32), "blocks.0.attention.wk.weight": (16, 32),
        "blocks.0.attention.wv.weight": (16, 32), "blocks.0.attention.wo.weight": (32, 32),
        "blocks.0.ffn_norm.weight": (32,), "blocks.0.feed_forward.w1.weight": (256, 32),
        "blocks.0.feed_forward.w3.weight": (256, 32), "blocks.0.feed_forward.w2.weight": (32, 256),
        "norm.weight": (32,), "output.weight": (64, 32)}


HF_NAMES = {"model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output",
            "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
            "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
            "mlp.gate_proj": "feed_forward.w1", "mlp.up_proj": "feed_forward.w3",
            "mlp.down_proj": "feed_forward.w2", "input_layernorm": "attention_norm",
            "post_attention_layernorm": "ffn_norm", "model.layers.": "blocks."}


def _ours(hf_name: str) -> str:
    for theirs, mine in HF_NAMES.items():
        hf_name = hf_name.replace(theirs, mine)
    return hf_name


@pytest.mark.parametrize("tied", [False, True])
def test_hugging_face_weights_map_by_renaming_alone(tied):
    """Hugging Face's LlamaForCausalLM, its weights renamed into ours (no permutation): the same
    logits (fp32), so RoPE, RMSNorm, GQA and SwiGLU are theirs."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                      rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                                      attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    cfg = LlamaConfig(layers=2, heads=4, kv_heads=2, width=32, intermediate=80, seq_len=16, vocab=64,
                      rope_theta=500000.0, norm_eps=1e-6, tied=tied)
    ours = get_model_spec("llama").parts().build(cfg).eval()
    state = {_ours(k): v for k, v in hf.state_dict().items()}
    if tied:
        state.pop("output.weight", None)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert unexpected == [] and missing == (["output.weight"] if tied else [])
    with torch.no_grad():  # the norms' weights away from ones, so that a swapped norm shows
        for name, p in ours.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        hf.load_state_dict({k: ours.state_dict()[_ours(k)] for k in hf.state_dict()})
        idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
        want = hf(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_export_ties_what_the_recorded_model_ties():
    """The export drops the output layer only for a model that tied it (the commit record's keys)."""
    from hpcorch.train.checkpoint.export import _recorded_tied

    llama, gpt = get_model_spec("llama"), get_model_spec("gpt")
    record = {"trainer.model.kind": "llama", "trainer.model.layers": 2, "trainer.model.kv_heads": 2}
    assert _recorded_tied(llama, record) is None
    assert _recorded_tied(llama, {**record, "trainer.model.tied": True}) == ("tok_embeddings.weight", "output.weight")
    assert _recorded_tied(gpt, {}) == ("wte.weight", "head.weight")  # the oldest records: the family's default


@pytest.mark.parametrize("name", ["llama-350m", "llama-1b", "llama-8b"])
def test_the_llama_presets_fit_h100_ndr(repo, name):
    out = run_cli("plan", repo / f"jobs/{name}.yaml", "-p", "h100-ndr")
    assert out.returncode == 0, out.stderr
    assert "fits" in out.stdout


def test_llama_8b_without_tp_and_checkpointing_is_refused_with_a_fix(repo):
    """The 8B preset's tp 2 and activation checkpointing are what the planner asks for."""
    out = run_cli("plan", repo / "jobs/llama-8b.yaml", "-p", "h100-ndr", "--set", "trainer.parallel.tp=1",
                  "--set", "trainer.activation_checkpointing=false")
    assert out.returncode == 2
    assert "the cheapest change that fits: --set trainer.activation_checkpointing=true" in out.stderr, out.stderr
