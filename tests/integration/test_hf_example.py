"""The README's Hugging Face example, small, through the CLI on the embedded local profile:
prepare part of the Python standard library with GPT-2's tokenizer, train the shipped
``llama-tiny-gpt2`` job a few steps, ``hpcorch export --format hf``, then load the folder with
transformers' Auto classes (no warning, no missing or unexpected key), tokenize as hpcorch does,
match hpcorch's logits and generate."""
from __future__ import annotations

import sysconfig

import pytest
from conftest import run_cli

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from hfhelp import load_hf, load_hf_tokenizer, max_logit_diff, ours_at  # noqa: E402

from hpcorch.data.tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.timeout(600)

TEXT = "import json\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n"


def test_prepare_train_llama_tiny_export_and_generate_with_transformers(tmp_path):
    stdlib = sysconfig.get_paths()["stdlib"]
    env = {"HPCORCH_HOME": str(tmp_path / "home")}
    # The README prepares "$STDLIB"/*.py; one package (~50k tokens) keeps this quick.
    got = run_cli("data", "prepare", f"{stdlib}/json/*.py", "--out", "data/stdlib-gpt2", "--tokenizer", "gpt2",
                  cwd=tmp_path, env=env)
    assert got.returncode == 0, got.stdout + got.stderr
    got = run_cli("submit", "llama-tiny-gpt2", "--run-dir", tmp_path / "run", "--set", "trainer.steps=4",
                  "--set", "trainer.checkpoint.interval=4", "--set", "trainer.eval_interval=4",
                  cwd=tmp_path, env=env, timeout=400)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert "hpcorch: done at step 4" in got.stdout
    # Exported by the job's name, from another directory than the one it was submitted from.
    (tmp_path / "elsewhere").mkdir()
    got = run_cli("export", "llama-tiny-gpt2", "--format", "hf", "--out", tmp_path / "hf", cwd=tmp_path / "elsewhere",
                  env=env)
    assert got.returncode == 0, got.stdout + got.stderr
    folder = tmp_path / "hf"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generation_config.json", "merges.txt", "model.safetensors", "tokenizer_config.json",
        "vocab.json"]

    model = load_hf(folder)  # no missing/unexpected keys, no warnings
    tok = load_hf_tokenizer(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 50304
    ids = tok(TEXT)["input_ids"]
    assert ids == load_tokenizer("gpt2").encode(TEXT)
    assert tok.decode(ids) == TEXT

    ours, cfg = ours_at(tmp_path / "run", 4)
    idx = torch.tensor([ids])
    with torch.no_grad():
        diff = float((ours.eval()(idx)[0] - model(idx).logits).abs().max())
    assert diff < 1e-5, diff
    assert max_logit_diff(ours, model, cfg.vocab, cfg.seq_len) < 1e-5

    # generate() stops at the tokenizer's end of text: the export names it in both configs.
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tok.eos_token_id == 50256
    prompt = tok("import os\n", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                         pad_token_id=tok.eos_token_id)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 5)
    assert tok.decode(out[0]).startswith("import os\n")
