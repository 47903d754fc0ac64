"""Offline tokenizers (hpcorch.data.tokenizer): GPT-2's ids equal an independent implementation's,
with the network unreachable; HF tokenizer.json files; bytes; the files an HF export writes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hpcorch.data.tokenizer import TokenizerError, gpt2_files, load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gpt2_offline_matches_hf_bpe_on_stdlib(tmp_path):
    """In a fresh process with every proxy pointed at a closed port and no tiktoken cache, the
    GPT-2 ids of a few hundred stdlib files equal HF ``tokenizers``' byte-level BPE built from
    the same files (an independent implementation)."""
    script = tmp_path / "check.py"
    script.write_text("""
import json, sys, sysconfig
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from hpcorch.data.tokenizer import gpt2_files, load_tokenizer
tok = load_tokenizer("gpt2")
assert tok.encode("hello world") == [31373, 995], tok.encode("hello world")
assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
f = gpt2_files()
ref = Tokenizer(models.BPE.from_file(str(f["encoder.json"]), str(f["vocab.bpe"])))
ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
root = Path(sysconfig.get_paths()["stdlib"])
files = sorted(p for p in list(root.glob("*.py")) + list(root.glob("*/*.py")) if "site-packages" not in p.parts)[:300]
texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
texts.append("a literal <|endoftext|> inside a document is text")
ours = tok.encode_batch(texts)
assert all(list(tok.encode_array(t)) == o for t, o in zip(texts, ours))
theirs = [e.ids for e in ref.encode_batch(texts)]
bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
assert not bad, [str(files[i]) for i in bad[:3]]
print("OK", len(texts), sum(map(len, ours)))
""")
    port = _closed_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), TIKTOKEN_CACHE_DIR=str(tmp_path / "empty-cache"),
               http_proxy=f"http://127.0.0.1:{port}", https_proxy=f"http://127.0.0.1:{port}",
               HTTP_PROXY=f"http://127.0.0.1:{port}", HTTPS_PROXY=f"http://127.0.0.1:{port}", no_proxy="")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("OK 301")
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_gpt2_files_carry_tiktokens_hashes():
    import hashlib
    import inspect

    from tiktoken_ext import openai_public
    src = inspect.getsource(openai_public.gpt2)
    for name, path in gpt2_files().items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() in src, name


def test_hf_tokenizer_json_and_eot_choice(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "</s>"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = load_tokenizer(str(path))
    assert (loaded.vocab_size, loaded.eot_id) == (5, 4)
    assert loaded.encode("a b a </s>") == [0, 1, 0, 2, 2, 2] or loaded.encode("a b a </s>")[:3] == [0, 1, 0]
    named = load_tokenizer(f"{path}:eot=<pad>")
    assert named.eot_id == 3 and named.ref().name.endswith(":eot=<pad>")
    assert named.sha256 == loaded.sha256
    with pytest.raises(TokenizerError, match="eot='zzz'"):
        load_tokenizer(f"{path}:eot=zzz")
    plain = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(TokenizerError, match="no end-of-text token"):
        load_tokenizer(str(tmp_path / "plain.json"))


@pytest.mark.parametrize("name, expected", [
    ("nope", "unknown"), ("/no/such/tokenizer.json", "no such tokenizer file"), ("BAD", "not a Hugging Face")])
def test_bad_tokenizer_is_one_line(tmp_path, name, expected):
    if name == "BAD":
        name = str(tmp_path / "bad.json")
        Path(name).write_text("{not json")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(name)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_bytes_tokenizer():
    tok = load_tokenizer("bytes")
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    assert tok.encode("hé") == [104, 195, 169]
    assert tok.decode([104, 195, 169, 256]) == "hé"


@pytest.mark.parametrize("name", ["gpt2", "bytes"])
def test_save_hf_loads_with_transformers(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(name)
    tok.save_hf(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "hello world, héllo"
    assert hf(text)["input_ids"] == tok.encode(text)
    assert hf.eos_token_id == tok.eot_id
    # and the HF file round-trips through our own loader
    if (tmp_path / "tokenizer.json").exists():
        again = load_tokenizer(str(tmp_path / "tokenizer.json"))
        assert again.encode(text) == tok.encode(text) and again.eot_id == tok.eot_id
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"]
