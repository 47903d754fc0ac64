"""``hpcorch data prepare`` here: shards and dataset.json byte-identical for 1 and 4 processes,
reruns redo only unfinished shards, every bad-input class is one line (stop) or counted (skip),
a full disk publishes no shard, a vocabulary above 65,536 ids gives int32 shards."""
from __future__ import annotations

import gzip
import hashlib
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import mounted_tmpfs, run_cli

from hpcorch.data import prepare as prep
from hpcorch.data.corpus import CorpusError
from hpcorch.data.index import DatasetIndex
from hpcorch.data.tokenizer import load_tokenizer
from hpcorch.service import data as service


def _corpus(root: Path) -> Path:
    """~60 stdlib files, a JSONL, a gzipped JSONL and a zstd text file."""
    import zstandard

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    src = root / "corpus"
    (src / "py").mkdir(parents=True)
    for p in sorted(stdlib.glob("[a-s]*.py"))[:60]:
        (src / "py" / p.name).write_bytes(p.read_bytes())
    lines = [json.dumps({"text": f"document {i} " * (i + 1), "id": i}) for i in range(50)]
    (src / "docs.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(src / "more.jsonl.gz", "wt") as f:
        f.write("\n".join(lines[:10]) + "\n")
    (src / "z.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("zstd text é".encode()))
    return src


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_one_and_four_processes_write_identical_bytes(tmp_path):
    src = _corpus(tmp_path)
    one = service.prepare([str(src)], tmp_path / "one", shard_bytes=64 << 10)
    four = service.prepare([str(src)], tmp_path / "four", shard_bytes=64 << 10, processes=4)
    assert one.finished and four.finished and one.shards >= 6
    assert _digest(tmp_path / "one") == _digest(tmp_path / "four")
    index = DatasetIndex.load(tmp_path / "one")
    tok = load_tokenizer("gpt2")
    shards = index.open_shards(tmp_path / "one")
    # Every document ends with EOT; sources in input order (a folder sorted by relative path).
    py = sorted(p.name for p in (src / "py").iterdir())
    assert [Path(s.path).name for s in index.sources[:3]] == ["docs.jsonl", "more.jsonl.gz", py[0]]
    assert list(shards[0].document(1)) == tok.encode("document 1 document 1 ") + [50256]
    assert all(int(s.document(d)[-1]) == 50256 for s in shards for d in range(s.num_documents))
    assert index.documents == len(py) + 50 + 10 + 1 and index.dtype == "uint16"
    assert index.sources[-1].path.endswith("z.txt.zst") and index.sources[-1].sha256 == hashlib.sha256(
        (src / "z.txt.zst").read_bytes()).hexdigest()
    assert tok.decode(shards[-1].document(shards[-1].num_documents - 1)[:-1]) == "zstd text é"


def test_rerun_redoes_only_unfinished_shards(tmp_path):
    src = _corpus(tmp_path)
    out = tmp_path / "out"
    service.prepare([str(src)], out, shard_bytes=64 << 10)
    before = _digest(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*")}
    # A task that never finished: its marker and dataset.json gone, its shard half-written.
    plan = prep.load_plan(out)
    plan.tasks.marker("shard_00002").unlink()
    (out / "dataset.json").unlink()
    (out / "shard_00002.bin").write_bytes(b"junk")
    (out / "shard_00002.bin.oldhost.123.tmp").write_bytes(b"a killed writer's temporary file")
    again = service.prepare([str(src)], out, shard_bytes=64 << 10, processes=2)
    assert again.ran == ["shard_00002"] and again.finished
    assert _digest(out) == before and not list(out.glob("*.tmp"))
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*")}
    changed = sorted(n for n in mtimes if mtimes[n] != after[n])
    assert changed == ["shard_00002.bin", "shard_00002.idx"]
    done = run_cli("data", "prepare", src, "--out", out, "--shard-bytes", 64 << 10)
    assert done.returncode == 0 and "nothing to do" in done.stdout
    other = run_cli("data", "prepare", src, "--out", out)
    assert other.returncode == 2 and "other inputs or options" in other.stderr and "Traceback" not in other.stderr
    shown = run_cli("data", "show", out, "--json")
    assert json.loads(shown.stdout)["documents"] == len(list((src / "py").iterdir())) + 61


BAD = {
    "invalid-utf8": ("bad.txt", b"fine\nstill fine\n\xff\xfe broken", "bad.txt:3: invalid UTF-8"),
    "not-json": ("bad.jsonl", b'{"text": "ok"}\n{not json}\n', "bad.jsonl:2: not JSON"),
    "no-field": ("bad.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "bad.jsonl:2: expected an object with a string field 'text'"),
    "not-string": ("bad.jsonl", b'{"text": 3}\n', "bad.jsonl:1: expected an object"),
    "bad-gzip": ("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage", "bad.jsonl.gz: unreadable after 0 documents"),
    "bad-gzip-data": ("bad.txt.gz", gzip.compress(b"x" * 1000)[:12] + b"\xff" * 40, "bad.txt.gz: unreadable"),
    "bad-zstd": ("bad.txt.zst", b"not zstd at all", "bad.txt.zst: unreadable after 0 documents"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_stops_with_one_line_or_is_counted(tmp_path, case):
    name, raw, expected = BAD[case]
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_text("a good document")
    (src / name).write_bytes(raw)
    inputs = [str(src)]
    stop = run_cli("data", "prepare", *inputs, "--out", tmp_path / "stop")
    assert stop.returncode == 2, stop.stderr
    assert expected in stop.stderr and "Traceback" not in stop.stderr, stop.stderr
    assert len(stop.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "stop" / "dataset.json").exists()
    skip = service.prepare(inputs, tmp_path / "skip", on_error="skip")
    assert skip.finished
    index = DatasetIndex.load(tmp_path / "skip")
    by_name = {Path(s.path).name: s for s in index.sources}
    assert by_name[name].skipped == 1 and by_name["good.txt"].documents == 1
    assert index.skipped == 1 and index.options["on_error"] == "skip"


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_unreadable_file(tmp_path, policy):
    """A file that cannot be read when its task runs (here: gone after planning; root reads
    any mode) is one line naming it, or a skipped, counted file."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_text("a good document")
    (src / "gone.txt").write_text("soon gone")
    plan = service.plan_prepare([str(src)], tmp_path / "out", on_error=policy)
    prep.save_plan(plan)
    (src / "gone.txt").unlink()
    if policy == "stop":
        with pytest.raises(CorpusError, match=r"gone.txt: cannot read \(No such file"):
            prep.run_here(plan)
        return
    prep.run_here(plan)
    index = DatasetIndex.load(tmp_path / "out")
    assert [(Path(s.path).name, s.documents, s.skipped) for s in index.sources] == [("gone.txt", 0, 1),
                                                                                    ("good.txt", 1, 0)]


def test_corpus_error_names_file_and_line(tmp_path):
    from hpcorch.data.corpus import Source

    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n[1]\n')
    with pytest.raises(CorpusError, match=r"x.jsonl:4: expected an object"):
        list(Source(path))
    source = Source(path, on_error="skip")
    assert list(source) == ["a", "b"]
    assert source.record().documents == 2 and source.record().skipped == 1


def test_full_disk_publishes_no_shard(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.txt").write_text(" ".join(f"word{j}" for j in range(60_000)))
    with mounted_tmpfs(tmp_path / "small", "256k") as small:
        out = small / "out"
        result = run_cli("data", "prepare", src, "--out", out, "--shard-bytes", 1)
        assert result.returncode == 2, result.stderr
        assert "cannot write the shard" in result.stderr and "Traceback" not in result.stderr
        plan = prep.load_plan(out)
        done = plan.tasks.done()
        assert len(done) < 4 and not (out / "dataset.json").exists()
        for name in plan.shard_names:
            files = {p.name for p in out.iterdir() if p.name.startswith(name)}
            if name in done:
                assert files == {f"{name}.bin", f"{name}.idx"}
            else:
                assert files == set(), files  # neither a pair nor a temporary stays


def test_llama3_size_vocabulary_gives_int32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["[UNK]"] = 70_000
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|end_of_text|>"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    src = tmp_path / "doc.txt"
    src.write_text("w1 w69999 w65536 nope")
    service.prepare([str(src)], tmp_path / "out", tokenizer=str(path))
    index = DatasetIndex.load(tmp_path / "out")
    assert index.dtype == "int32" and index.tokenizer.vocab_size == 70_002 and index.tokenizer.eot_id == 70_001
    shard = index.open_shards(tmp_path / "out")[0]
    assert shard.tokens.dtype == np.int32
    assert list(shard.document(0)) == [1, 69999, 65536, 70000, 70001]


def test_dry_run_renders_one_array_for_the_dev_cluster(tmp_path):
    src = _corpus(tmp_path)
    result = run_cli("data", "prepare", src, "--out", tmp_path / "out", "--shard-bytes", 64 << 10,
                     "-p", "devcluster", "--max-parallel", "2", "--dry-run")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert "#SBATCH --array=0-" in script and "%2" in script
    assert "-m hpcorch.data.prepare" in script and "export OMP_NUM_THREADS=1" in script
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    local = run_cli("data", "prepare", src, "--out", tmp_path / "out", "--dry-run")
    assert local.returncode == 2 and "--profile" in local.stderr


def test_data_commands_import_neither_torch_nor_submitit(tmp_path):
    import subprocess
    import sys

    (tmp_path / "a.txt").write_text("hello world")
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            f"for args in (['data', 'prepare', {str(tmp_path / 'a.txt')!r}, '--out', {str(tmp_path / 'o')!r}],\n"
            f"             ['data', 'show', {str(tmp_path / 'o')!r}],\n"
            f"             ['data', 'prepare', {str(tmp_path / 'a.txt')!r}, '--out', {str(tmp_path / 'p')!r}, "
            "'-p', 'devcluster', '--dry-run']):\n"
            "    try:\n        main(args)\n    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('torch', 'submitit', 'paramiko') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_export_writes_the_runs_tokenizer(tmp_path):
    """``hpcorch export --format hf`` puts the job's tokenizer beside the weights: the named one,
    else its prepared dataset's; nothing for a job that names none."""
    from types import SimpleNamespace

    transformers = pytest.importorskip("transformers")

    def job(**data):
        return SimpleNamespace(trainer=SimpleNamespace(data=SimpleNamespace(**data)))

    (tmp_path / "a.txt").write_text("hello world")
    service.prepare([str(tmp_path / "a.txt")], tmp_path / "ds", tokenizer="bytes")
    assert service.run_tokenizer(job(tokenizer="gpt2", datasets=[("web", tmp_path / "ds")])) == "gpt2"
    assert service.run_tokenizer(job(tokenizer=None, datasets=[("web", str(tmp_path / "ds"))])) == "bytes"
    # A run's relative paths are read where it was submitted from (base), not in this process's cwd.
    assert service.run_tokenizer(job(tokenizer=None, datasets=[("web", "ds")]), base=tmp_path) == "bytes"
    assert service.run_tokenizer(job(tokenizer="t/tokenizer.json"), base=tmp_path) == str(tmp_path / "t/tokenizer.json")
    assert service.run_tokenizer(job(tokenizer="gpt2"), base=tmp_path) == "gpt2"
    assert service.write_hf_tokenizer(job(tokenizer=None), tmp_path / "none") == []
    written = service.write_hf_tokenizer(job(tokenizer="gpt2"), tmp_path / "hf")
    assert {p.name for p in written} == {"vocab.json", "merges.txt", "tokenizer_config.json"}
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))("hello world")["input_ids"] == [31373, 995]
