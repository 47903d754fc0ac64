import os
import re
import threading

import numpy as np
import pytest
import torch

from hpcorch.spec.job import DataSpec
from hpcorch.spec.schema import Invalid
from hpcorch.train.data import DataError, DataSource, stdlib_files
from hpcorch.train.prefetch import StepBatches


def test_bin_tokens_are_read_as_uint16_windows(tmp_path):
    tokens = (np.arange(10_000) * 7 % 50_000).astype(np.uint16)
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    data = DataSource(DataSpec(source="bin", path=str(path), val_fraction=0.1), seq_len=16, seed=3)
    ids, x, y = data.train.batch(range(4))
    for row, sample in enumerate(ids):
        window = tokens[sample * 16: sample * 16 + 17].astype(np.int64)
        assert x[row].tolist() == window[:-1].tolist() and y[row].tolist() == window[1:].tolist()
    assert x.max() > 255  # real 16-bit ids, not bytes


def test_text_source_and_split_are_deterministic(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 500)
    (tmp_path / "b.txt").write_text("other text " * 500)
    spec = DataSpec(source="text", path=str(tmp_path), val_fraction=0.2)
    a, b = DataSource(spec, 32, 1), DataSource(spec, 32, 1)
    assert a.train.batch(range(8))[0] == b.train.batch(range(8))[0]
    assert a.val.num_samples > 0 and a.train.num_samples > 3 * a.val.num_samples


def test_sample_order_is_a_permutation_per_epoch():
    data = DataSource(DataSpec(max_bytes=200_000), 64, 5)
    n = data.train.num_samples
    first = sorted(data.train.sample_id(p) for p in range(n))
    second = [data.train.sample_id(p) for p in range(n, 2 * n)]
    assert first == list(range(n)) and sorted(second) == list(range(n))
    assert second != [data.train.sample_id(p) for p in range(n)]  # a new order each epoch
    assert stdlib_files()  # the default corpus exists on every machine


# ----- val_path: nanoGPT's train.bin + val.bin ------------------------------------------------
def _bin(path, n, mult=7):
    tokens = (np.arange(n) * mult % 50_000).astype(np.uint16)
    tokens.tofile(path)
    return tokens


def test_val_path_reads_validation_from_its_own_file(tmp_path):
    train, val = _bin(tmp_path / "train.bin", 4000), _bin(tmp_path / "val.bin", 900, mult=11)
    spec = DataSpec(source="bin", path=str(tmp_path / "train.bin"), val_path=str(tmp_path / "val.bin"))
    data = DataSource(spec, seq_len=16, seed=3)
    assert data.train.num_samples == (len(train) - 1) // 16  # all of train.bin trains
    assert data.val.num_samples == (len(val) - 1) // 16
    ids, x, _ = data.val.batch(range(3))
    for row, sample in enumerate(ids):
        assert x[row].tolist() == val[sample * 16: sample * 16 + 16].astype(np.int64).tolist()


def test_val_path_with_text_files(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.txt").write_text("training text " * 300)
    (tmp_path / "val.txt").write_text("validation " * 100)
    spec = DataSpec(source="text", path=str(tmp_path / "train"), val_path=str(tmp_path / "val.txt"))
    data = DataSource(spec, seq_len=32, seed=1)
    _, x, _ = data.val.batch(range(1))
    assert bytes(x[0].tolist()).decode() in ("validation " * 100 + "\n\x00\n")


def test_val_path_is_refused_for_stdlib():
    with pytest.raises(Invalid, match="val_path"):
        DataSpec(val_path="val.bin")


@pytest.mark.parametrize("case, key, match", [
    ("missing_train", "trainer.data.path", "No such file"),
    ("missing_val", "trainer.data.val_path", "No such file"),
    ("odd_size", "trainer.data.path", "even, nonzero size"),
    ("too_short_val", "trainer.data.val_path", "too few for sequences of 16"),
])
def test_data_file_problems_are_one_line_errors(tmp_path, case, key, match):
    train, val = tmp_path / "train.bin", tmp_path / "val.bin"
    _bin(train, 4000)
    _bin(val, 900)
    if case == "missing_train":
        train.unlink()
    elif case == "missing_val":
        val.unlink()
    elif case == "odd_size":
        train.write_bytes(b"abc")
    else:
        _bin(val, 10)
    spec = DataSpec(source="bin", path=str(train), val_path=str(val))
    with pytest.raises(DataError) as err:
        DataSource(spec, seq_len=16, seed=3, job="myjob")
    assert str(err.value).startswith(f"myjob: {key}: ") and "\n" not in str(err.value)
    assert re.search(match, str(err.value))
    if case.startswith("missing"):
        assert str(train if case == "missing_train" else val) in str(err.value)


# ----- StepBatches: the next step prepared in the background, same samples --------------------
def _expected(data, cursor, global_batch, rank, world, micro):
    share = global_batch // world  # rank r reads the r-th contiguous share of the step's positions
    positions = range(cursor + rank * share, cursor + (rank + 1) * share)
    return [data.train.batch(positions[k:k + micro]) for k in range(0, len(positions), micro)]


def _same(got, want):
    assert len(got) == len(want)
    for (gi, gx, gy), (wi, wx, wy) in zip(got, want, strict=True):
        assert gi == wi and torch.equal(gx, wx) and torch.equal(gy, wy)


@pytest.mark.parametrize("rank, world, micro", [(0, 1, 4), (1, 2, 2), (3, 4, 1)])
def test_step_batches_match_the_global_order(rank, world, micro):
    data = DataSource(DataSpec(max_bytes=100_000), 32, 5)
    n = data.train.num_samples
    with StepBatches(data.train, rank, world, global_batch=8, micro_batch=micro, device="cpu") as batches:
        # In order (prefetched), across an epoch boundary, then a jump back (a resume).
        cursors = [0, 8, 16, (n // 8) * 8 - 8, (n // 8) * 8, (n // 8) * 8 + 8, 8, 16]
        for cursor in cursors:
            _same(batches.get(cursor), _expected(data, cursor, 8, rank, world, micro))


def test_step_batches_prepare_the_next_step_in_the_background():
    data = DataSource(DataSpec(max_bytes=100_000), 32, 5)
    batches = StepBatches(data.train, 0, 1, global_batch=4, micro_batch=2, device="cpu")
    batches.get(0)
    assert list(batches._pending) == [4]  # step 2 is being built
    batches._pending[4].result(timeout=10)
    batches.get(4)
    batches.close()


def test_step_batches_raise_the_worker_error_in_get():
    data = DataSource(DataSpec(max_bytes=100_000), 32, 5)
    batches = StepBatches(data.train, 0, 1, global_batch=4, micro_batch=2, device="cpu")
    batches.get(0)
    batches._pending[4].result(timeout=10)  # the good prefetch of step 2 is done; break the next

    def broken(positions):
        raise OSError("disk gone")

    batches.order.batch = broken
    batches.get(4)  # served from the prefetch; starts building 8 with the broken order
    with pytest.raises(OSError, match="disk gone"):
        batches.get(8)
    batches.close()


def test_step_batches_close_leaves_no_thread():
    before = {t for t in threading.enumerate()}
    data = DataSource(DataSpec(max_bytes=100_000), 32, 5)
    for _ in range(3):
        batches = StepBatches(data.train, 0, 1, global_batch=4, micro_batch=2, device="cpu")
        batches.get(0)
        batches.close()
        batches.close()  # idempotent
    assert {t for t in threading.enumerate()} - before == set()
    with pytest.raises(RuntimeError, match="closed"):
        batches.get(0)


# ----- the token cache ----------------------------------------------------------------------------
def _text_tree(root):
    (root / "a.txt").write_text("hello world " * 500)
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("other text " * 700)
    return DataSpec(source="text", path=str(root), val_fraction=0.2)


def _same_data(a: DataSource, b: DataSource):
    for split in ("train", "val"):
        x, y = getattr(a, split), getattr(b, split)
        assert np.array_equal(np.asarray(x.tokens), np.asarray(y.tokens))
        assert x.batch(range(6))[0] == y.batch(range(6))[0]
        assert all(torch.equal(p, q) for p, q in zip(x.batch(range(6))[1:], y.batch(range(6))[1:], strict=True))


@pytest.mark.parametrize("source", ["text", "stdlib"])
def test_cached_tokens_are_the_tokens_read(tmp_path, source):
    from hpcorch.train.tokencache import TokenCache

    (tmp_path / "src").mkdir()
    spec = _text_tree(tmp_path / "src") if source == "text" else DataSpec(max_bytes=300_000)
    cache = TokenCache(tmp_path / "cache")
    plain = DataSource(spec, 32, 1)
    built = DataSource(spec, 32, 1, cache=cache)     # builds the file
    mapped = DataSource(spec, 32, 1, cache=cache)    # maps it
    _same_data(plain, built)
    _same_data(plain, mapped)
    assert isinstance(mapped.train.tokens.base, np.memmap) or isinstance(mapped.train.tokens, np.memmap)
    (token_file,) = (tmp_path / "cache").glob("tokens-*.u8")
    assert token_file.stat().st_size == len(plain.train.tokens) + len(plain.val.tokens)
    assert not list((tmp_path / "cache").glob(".*tmp"))  # no temporary left behind


def test_a_cached_source_is_not_read_again(tmp_path, monkeypatch):
    from hpcorch.train import data as data_module
    from hpcorch.train.tokencache import TokenCache

    (tmp_path / "src").mkdir()
    spec, cache = _text_tree(tmp_path / "src"), TokenCache(tmp_path / "cache")
    first = DataSource(spec, 32, 1, cache=cache)

    def refuse(*_):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(data_module, "read_bytes", refuse)
    _same_data(first, DataSource(spec, 32, 1, cache=cache))


def test_a_changed_source_gets_new_tokens(tmp_path):
    from hpcorch.train.tokencache import TokenCache

    (tmp_path / "src").mkdir()
    spec = _text_tree(tmp_path / "src")
    cache = TokenCache(tmp_path / "cache")
    DataSource(spec, 32, 1, cache=cache)
    edited = tmp_path / "src" / "a.txt"
    edited.write_text("HELLO WORLD " * 500)  # same size: the mtime tells
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    (tmp_path / "src" / "c.txt").write_text("a new file " * 100)
    after = DataSource(spec, 32, 1, cache=cache)
    _same_data(DataSource(spec, 32, 1), after)
    assert len(list((tmp_path / "cache").glob("tokens-*.u8"))) == 2
    # Another cap is another key too.
    capped = DataSpec(source="text", path=spec.path, val_fraction=0.2, max_bytes=5_000)
    assert len(DataSource(capped, 32, 1, cache=cache).train.tokens) + \
        len(DataSource(capped, 32, 1).val.tokens) == 5_000


def test_racing_builders_leave_one_whole_file(tmp_path):
    """Builders of the same key (one per node on a shared run directory) publish whole files."""
    from hpcorch.train.tokencache import TokenCache

    spec = DataSpec(max_bytes=400_000)
    results, errors = [], []

    def build():
        try:
            results.append(np.asarray(DataSource(spec, 32, 1, cache=TokenCache(tmp_path)).train.tokens).copy())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 4
    assert all(np.array_equal(results[0], r) for r in results)
    assert len(list(tmp_path.glob("tokens-*.u8"))) == 1 and not list(tmp_path.glob(".*tmp"))


def test_a_token_file_cut_short_is_rebuilt_not_trained_on(tmp_path):
    """A crash the file system did not order can leave a short token file; a short array would
    change every sample after it, so the cache checks the size against its side file."""
    from hpcorch.train.tokencache import TokenCache

    (tmp_path / "src").mkdir()
    spec, cache = _text_tree(tmp_path / "src"), TokenCache(tmp_path / "cache")
    whole = np.asarray(DataSource(spec, 32, 1, cache=cache).train.tokens).copy()  # not the map: cut below
    (token_file,) = (tmp_path / "cache").glob("tokens-*.u8")
    size = token_file.stat().st_size
    os.truncate(token_file, size // 2)
    again = DataSource(spec, 32, 1, cache=cache)
    assert np.array_equal(np.asarray(again.train.tokens), whole)
    assert token_file.stat().st_size == size


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_run(tmp_path, caplog):
    from hpcorch.train.tokencache import TokenCache

    (tmp_path / "src").mkdir()
    spec = _text_tree(tmp_path / "src")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level("WARNING", logger="hpcorch.train"):
        got = DataSource(spec, 32, 1, cache=TokenCache(blocked))
    _same_data(DataSource(spec, 32, 1), got)
    assert "tokens kept in memory" in caplog.text
