"""Training on prepared datasets: the sample order, mixtures, splits and every refusal."""
import re

import numpy as np
import pytest
import torch
from datahelp import TOY, documents, stream, write_dataset

from hpcorch.data.index import DatasetIndex, TokenizerRef
from hpcorch.data.sampling import Mixture, Permutation, largest_remainder
from hpcorch.spec.data import DataMix, DataSpec
from hpcorch.spec.schema import Invalid
from hpcorch.train.data import DataError, DataSource
from hpcorch.train.prefetch import StepBatches


def _prepared(*folders, weights=None, **kw) -> DataSpec:
    if len(folders) == 1 and weights is None:
        return DataSpec(source="prepared", path=str(folders[0]), **kw)
    weights = weights or [1.0] * len(folders)
    return DataSpec(source="prepared", mix=[DataMix(str(f), w) for f, w in zip(folders, weights, strict=True)], **kw)


def _one_line(err, job: str, key: str) -> str:
    text = str(err.value)
    assert text.startswith(f"{job}: {key}: ") and "\n" not in text, text
    return text


# ----- the order: pure functions of the seed ----------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_permutation_is_a_bijection_and_depends_on_its_key(n):
    a = [Permutation(n, [1, 0, 0])(i) for i in range(n)]
    assert sorted(a) == list(range(n))
    if n > 16:
        assert a != [Permutation(n, [1, 0, 1])(i) for i in range(n)] and a != list(range(n))


def test_largest_remainder_sums_and_rounds():
    assert largest_remainder([0.7, 0.2, 0.1], 1024) == [717, 205, 102]
    assert sum(largest_remainder([1 / 3] * 3, 1000)) == 1000


def test_mixture_holds_its_proportions_in_every_block():
    m = Mixture([0.7, 0.2, 0.1], seed=3)
    seen = [[0, 0, 0] for _ in range(3)]
    for g in range(3 * m.block):
        d, k = m.locate(g)
        assert k == (g // m.block) * m.counts[d] + seen[g // m.block][d]  # d's positions numbered in order
        seen[g // m.block][d] += 1
    assert all(block == m.counts for block in seen)
    assert [m.locate(g) for g in range(50)] != [Mixture([0.7, 0.2, 0.1], seed=4).locate(g) for g in range(50)]


def test_a_tiny_weight_still_gets_its_share():
    m = Mixture([0.999, 0.001], seed=1)
    assert m.block >= 100_000 and m.counts[1] >= 100


def test_mixed_samples_follow_the_weights(tmp_path):
    folders = [write_dataset(tmp_path / n, documents(120, i, 0, 100)) for i, n in enumerate("abc")]
    data = DataSource(_prepared(*folders, weights=[7, 2, 1]), seq_len=16, seed=5)
    order = data.train
    ids = [order.sample_id(p) for p in range(5000)]
    share = np.bincount([order.dataset_of(i) for i in ids], minlength=3) / len(ids)
    assert np.allclose(share, [0.7, 0.2, 0.1], atol=0.01), share
    assert data.train.weights == pytest.approx([0.7, 0.2, 0.1])  # normalised


def test_one_dataset_reads_every_sample_once_per_epoch_across_shards(tmp_path):
    docs = documents(90, 7)
    folder = write_dataset(tmp_path / "d", docs, shards=4)
    data = DataSource(_prepared(folder, val_fraction=0.1), seq_len=16, seed=2)
    n = data.train.num_samples
    first = [data.train.sample_id(p) for p in range(n)]
    second = [data.train.sample_id(p) for p in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    tokens = stream(docs)
    ids, x, y = data.train.batch(range(n))  # every window, some across shard boundaries
    for row, s in enumerate(ids):
        assert x[row].tolist() == tokens[s * 16:s * 16 + 16].tolist()
        assert y[row].tolist() == tokens[s * 16 + 1:s * 16 + 17].tolist()


def test_held_out_documents_are_whole_and_last(tmp_path):
    docs = documents(40, 3)
    folder = write_dataset(tmp_path / "d", docs)
    data = DataSource(_prepared(folder, val_fraction=0.1), seq_len=8, seed=2)
    train_len, val_len = len(stream(docs[:36])), len(stream(docs[36:]))  # ceil(40 * 0.1) = 4 held out
    assert (len(data.train.ranges[0]), len(data.val.ranges[0])) == (train_len, val_len)
    assert data.val.ranges[0].window(0, 8).tolist() == stream(docs[36:])[:8].tolist()


def test_val_path_names_a_validation_dataset(tmp_path):
    train = write_dataset(tmp_path / "train", documents(50, 1))
    val = write_dataset(tmp_path / "val", documents(10, 2, 300, 400))
    data = DataSource(_prepared(train, val_path=str(val)), seq_len=8, seed=2)
    assert len(data.train.ranges[0]) == DatasetIndex.load(train).tokens
    _, x, _ = data.val.batch(range(4))
    assert (x[x != TOY.eot_id] >= 300).all()


def test_int32_shards_hold_a_large_vocabulary(tmp_path):
    big = TokenizerRef("llama3", "cd" * 32, 128_256, 128_001)
    docs = documents(30, 4, 60_000, 128_000)
    folder = write_dataset(tmp_path / "d", docs, tokenizer=big, dtype="int32")
    data = DataSource(_prepared(folder), seq_len=16, seed=1, vocab=128_256)
    ids, x, _ = data.train.batch(range(3))
    assert x.dtype == torch.int64 and x.max() > 65_535
    assert x[0].tolist() == stream(docs, big.eot_id)[ids[0] * 16:ids[0] * 16 + 16].tolist()


def test_bin_source_reads_int32_and_uint32_tokens(tmp_path):
    for dtype in ("int32", "uint32"):
        tokens = (np.arange(5000) * 977 % 128_000).astype(dtype)
        tokens.tofile(tmp_path / f"{dtype}.bin")
        data = DataSource(DataSpec(source="bin", path=str(tmp_path / f"{dtype}.bin"), tokens=dtype), 16, 3)
        ids, x, _ = data.train.batch(range(2))
        assert x[0].tolist() == tokens[ids[0] * 16:ids[0] * 16 + 16].astype(np.int64).tolist()
    (tmp_path / "odd.bin").write_bytes(b"\0" * 6)
    with pytest.raises(DataError, match="nonzero multiple of 4 bytes"):
        DataSource(DataSpec(source="bin", path=str(tmp_path / "odd.bin"), tokens="int32"), 16, 3)


def test_step_batches_over_a_mixture_match_the_order(tmp_path):
    folders = [write_dataset(tmp_path / n, documents(60, i)) for i, n in enumerate("ab")]
    data = DataSource(_prepared(*folders, weights=[3, 1]), seq_len=8, seed=9)
    with StepBatches(data.train, dp_rank=1, dp_size=2, global_batch=8, micro_batch=2, device="cpu") as sb:
        for cursor in (0, 8, 16):
            got = sb.get(cursor)
            for k, (ids, x, _) in enumerate(got):
                want_ids, want_x, _ = data.train.batch(range(cursor + 4 + 2 * k, cursor + 6 + 2 * k))
                assert ids == want_ids and torch.equal(x, want_x)


# ----- refusals: one line naming the job and the key ----------------------------------------------
def test_a_changed_shard_is_refused(tmp_path):
    folder = write_dataset(tmp_path / "d", documents(30, 1))
    with open(folder / "shard_00001.bin", "ab") as f:
        f.write(b"\1\0")  # one token appended after the prepare
    with pytest.raises(DataError) as err:
        DataSource(_prepared(folder), seq_len=8, seed=1, job="myjob")
    text = _one_line(err, "myjob", "trainer.data.path")
    assert "shard_00001.bin" in text


def test_a_shard_swapped_for_another_prepare_is_refused(tmp_path):
    folder = write_dataset(tmp_path / "d", documents(30, 1))
    other = write_dataset(tmp_path / "o", documents(31, 2))
    for suffix in (".bin", ".idx"):
        (folder / f"shard_00000{suffix}").write_bytes((other / f"shard_00000{suffix}").read_bytes())
    with pytest.raises(DataError) as err:
        DataSource(_prepared(folder), seq_len=8, seed=1, job="myjob")
    assert "changed since it was prepared" in _one_line(err, "myjob", "trainer.data.path")


def test_another_tokenizer_is_refused_naming_both(tmp_path):
    folder = write_dataset(tmp_path / "d", documents(30, 1))
    with pytest.raises(DataError) as err:
        DataSource(_prepared(folder, tokenizer="gpt2"), seq_len=8, seed=1, job="myjob")
    text = _one_line(err, "myjob", "trainer.data.tokenizer")
    assert "gpt2" in text and "toy" in text and str(folder) in text


def test_a_mixture_of_two_tokenizers_is_refused(tmp_path):
    a = write_dataset(tmp_path / "a", documents(30, 1))
    b = write_dataset(tmp_path / "b", documents(30, 1), tokenizer=TokenizerRef("toy", "ef" * 32, 512, 511))
    with pytest.raises(DataError) as err:
        DataSource(_prepared(a, b), seq_len=8, seed=1, job="myjob")
    assert "one tokenizer" in _one_line(err, "myjob", "trainer.data.mix[1].path")


def test_a_vocab_smaller_than_the_tokenizer_is_refused(tmp_path):
    folder = write_dataset(tmp_path / "d", documents(30, 1))
    with pytest.raises(DataError) as err:
        DataSource(_prepared(folder), seq_len=8, seed=1, job="myjob", vocab=256)
    text = _one_line(err, "myjob", "trainer.model.vocab")
    assert "256" in text and "512" in text


@pytest.mark.parametrize("case, key, match", [
    ("missing", "trainer.data.mix[1].path", "not found"),
    ("short", "trainer.data.mix[1].path", "too few for sequences of 64"),
    ("one_document", "trainer.data.mix[1].path", "whole documents"),
])
def test_dataset_problems_are_one_line_errors(tmp_path, case, key, match):
    good = write_dataset(tmp_path / "good", documents(200, 1))
    bad = tmp_path / "bad"
    if case == "short":
        write_dataset(bad, documents(5, 1, max_len=8), shards=1)
    elif case == "one_document":
        write_dataset(bad, documents(1, 1), shards=1)
    with pytest.raises(DataError) as err:
        DataSource(_prepared(good, bad), seq_len=64, seed=1, job="myjob")
    assert re.search(match, _one_line(err, "myjob", key))


@pytest.mark.parametrize("kw, field, match", [
    ({"path": "a", "mix": [DataMix("b")]}, "path", "either path"),
    ({}, "path", "either path"),
    ({"mix": [DataMix("a"), DataMix("a")]}, "mix[1].path", "already mix"),
    ({"mix": [DataMix("a", 1.0), DataMix("b", 1e-5)]}, "mix[1].weight", "smallest share"),
    ({"path": "a", "tokens": "int32"}, "tokens", "uint16"),
])
def test_prepared_schema_errors(kw, field, match):
    with pytest.raises(Invalid) as err:
        DataSpec(source="prepared", **kw)
    assert err.value.field == field and re.search(match, err.value.message)


def test_mix_weight_must_be_positive_and_mix_only_for_prepared():
    with pytest.raises(Invalid, match="positive"):
        DataMix("a", 0)
    with pytest.raises(Invalid) as err:
        DataSpec(source="text", path="x", mix=[DataMix("a")])
    assert err.value.field == "mix"


# ----- plan time: the indexes are read where the job is planned ---------------------------------
def _job_file(tmp_path, data: str, vocab: int = 512):
    job = tmp_path / "job.yaml"
    job.write_text("name: prep\nresources: {tasks_per_node: 1, time: '5'}\n"
                   f"trainer:\n  model: {{layers: 1, heads: 2, width: 32, seq_len: 16, vocab: {vocab}}}\n"
                   f"  data: {data}\n")
    return job


def test_plan_refuses_a_small_vocab_and_another_tokenizer_naming_the_job_file(tmp_path):
    from conftest import run_cli

    a = write_dataset(tmp_path / "a", documents(30, 1))
    b = write_dataset(tmp_path / "b", documents(30, 2))
    mix = f"{{source: prepared, mix: [{{path: {a}, weight: 2}}, {{path: {b}}}]}}"
    ok = run_cli("plan", _job_file(tmp_path, mix))
    assert ok.returncode == 0, ok.stderr
    small = run_cli("plan", _job_file(tmp_path, mix, vocab=256))
    assert small.returncode == 2 and small.stderr.count("\n") == 1, small.stderr
    assert small.stderr.startswith(f"error: {tmp_path / 'job.yaml'}: trainer.model.vocab: 256 is smaller")
    assert "512" in small.stderr
    other = run_cli("plan", _job_file(tmp_path, f"{{source: prepared, path: {a}, tokenizer: gpt2}}"))
    assert other.returncode == 2 and "trainer.data.tokenizer" in other.stderr and "toy" in other.stderr
    missing = run_cli("plan", _job_file(tmp_path, f"{{source: prepared, path: {tmp_path / 'nowhere'}}}"))
    assert missing.returncode == 2 and "trainer.data.path" in missing.stderr and "dataset.json" in missing.stderr


def test_a_named_tokenizer_is_compared_by_its_files(tmp_path):
    from hpcorch.data.tokenizer import load_tokenizer

    gpt2 = load_tokenizer("gpt2").ref()
    real = write_dataset(tmp_path / "real", documents(30, 1), tokenizer=gpt2)
    data = DataSource(_prepared(real, tokenizer="gpt2"), seq_len=8, seed=1, vocab=50304)
    assert data.tokenizer == gpt2
    fake = write_dataset(tmp_path / "fake", documents(30, 1), tokenizer=TokenizerRef("gpt2", "00" * 32, 50257, 50256))
    with pytest.raises(DataError) as err:
        DataSource(_prepared(fake, tokenizer="gpt2"), seq_len=8, seed=1, job="myjob", vocab=50304)
    assert "sha256 000000000000" in _one_line(err, "myjob", "trainer.data.tokenizer")


# ----- text tokenized on the fly by a named tokenizer ---------------------------------------------
def test_text_with_a_named_tokenizer_is_its_ids_with_end_of_text(tmp_path):
    from hpcorch.data.tokenizer import load_tokenizer
    from hpcorch.train.tokencache import TokenCache

    (tmp_path / "src").mkdir()
    texts = {"a.txt": "hello world\n" * 200, "b.txt": "def f(x):\n    return x + 1\n" * 100}
    for name, text in texts.items():
        (tmp_path / "src" / name).write_text(text)
    gpt2 = load_tokenizer("gpt2")
    want = [t for name in sorted(texts) for t in [*gpt2.encode(texts[name]), 50256]]
    spec = DataSpec(source="text", path=str(tmp_path / "src"), tokenizer="gpt2", val_path=str(tmp_path / "src"))
    cache = TokenCache(tmp_path / "cache")
    for _ in range(2):  # built, then mapped
        data = DataSource(spec, 16, 1, cache=cache, vocab=50304)
        assert np.asarray(data.train.tokens).tolist() == want and data.tokenizer == gpt2.ref()
    assert [p.suffix for p in (tmp_path / "cache").glob("tokens-*.u*")] == [".u16"]  # the tokenizer's own key
    DataSource(DataSpec(source="text", path=str(tmp_path / "src")), 16, 1, cache=cache)
    assert sorted(p.suffix for p in (tmp_path / "cache").glob("tokens-*.u*")) == [".u16", ".u8"]


def test_a_named_tokenizer_needs_the_vocab_and_must_load(tmp_path):
    with pytest.raises(DataError) as err:
        DataSource(DataSpec(tokenizer="gpt2", max_bytes=10_000), 16, 1, job="myjob", vocab=256)
    text = _one_line(err, "myjob", "trainer.model.vocab")
    assert "256" in text and "50257" in text
    with pytest.raises(DataError) as err:
        DataSource(DataSpec(tokenizer="gtp2", max_bytes=10_000), 16, 1, job="myjob", vocab=256)
    assert "gtp2" in _one_line(err, "myjob", "trainer.data.tokenizer")


def test_plan_checks_a_named_tokenizer_against_the_vocab(tmp_path):
    from conftest import run_cli

    small = run_cli("plan", _job_file(tmp_path, "{source: stdlib, tokenizer: gpt2}", vocab=256))
    assert small.returncode == 2 and small.stderr.count("\n") == 1, small.stderr
    assert "trainer.model.vocab: 256 is smaller than tokenizer gpt2's 50257 ids" in small.stderr
    assert run_cli("plan", _job_file(tmp_path, "{source: stdlib, tokenizer: gpt2}", vocab=50304)).returncode == 0
