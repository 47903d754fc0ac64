import numpy as np

from hpcorch.spec.job import DataSpec
from hpcorch.train.data import DataSource, stdlib_files


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
