"""Raw tensor files and XXH3 digests (hpcorch.train.checkpoint.rawio): what the faster format
must still guarantee: every byte verified before a load counts, torn writes caught, old
checkpoints readable, stock readers refusing rather than misreading."""
import hashlib
import json

import pytest
import torch

from hpcorch.state.rundir import COMMIT_MARKER as COMMIT
from hpcorch.state.rundir import CheckpointLayout
from hpcorch.train.checkpoint.store import CheckpointError, CheckpointStore


def _state(step: int) -> dict:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) + step
    return {"model": {"w": base.t(),  # not contiguous: written in row-major order of its shape
                      "b16": torch.full((5,), float(step), dtype=torch.bfloat16),
                      "count": torch.tensor(step, dtype=torch.int64),  # 0-dim
                      "big": torch.full((4096,), float(step))},
            "extra": {"note": f"step {step}"}}  # not a tensor: DCP pickles it


def _target() -> dict:
    return {"model": {"w": torch.empty(4, 3), "b16": torch.empty(5, dtype=torch.bfloat16),
                      "count": torch.tensor(0, dtype=torch.int64), "big": torch.empty(4096)},
            "extra": {"note": ""}}


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["extra"] == b["extra"]


def _data_file(root, step):
    return CheckpointLayout(root).step_dir(step) / "__0_0.distcp"


def test_load_fills_the_destination_tensors_in_place(tmp_path):
    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=2)
    ck.save(3, _state(3), {"rng": 3}, {})
    target = _target()
    pointers = {k: v.data_ptr() for k, v in target["model"].items()}
    got, local, record = ck.load(3, target)
    assert got is target and _equal(got, _state(3)) and local == {"rng": 3}
    assert {k: v.data_ptr() for k, v in target["model"].items()} == pointers
    assert all("xxh3_128" in entry and "sha256" not in entry for entry in record["files"].values())


def test_a_torn_write_is_caught_and_the_fallback_overwrites_everything(tmp_path):
    """A block of the newest file zeroed in place (same size: what a lost write looks like) is
    found on load; the older checkpoint then loads over whatever the torn one had put there."""
    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=3)
    ck.save(1, _state(1), {"rng": 1}, {})
    ck.save(2, _state(2), {"rng": 2}, {})
    path = _data_file(tmp_path, 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 512] = bytes(512)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest"):
        ck.load(2, _target())
    messages, target = [], _target()
    step, got, _, _ = ck.load_latest(log=messages.append, target=target)
    assert step == 1 and _equal(got, _state(1)) and "skipping corrupted checkpoint" in messages[0]


def test_pickled_values_are_only_unpickled_after_their_file_verifies(tmp_path, monkeypatch):
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    ck = CheckpointStore(tmp_path, rank=0, world_size=1)
    ck.save(1, _state(1), {"rng": 1}, {})
    path = _data_file(tmp_path, 1)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the last byte: after every value
    unpickled = []
    real = DefaultLoadPlanner.load_bytes
    monkeypatch.setattr(DefaultLoadPlanner, "load_bytes", lambda self, *a: (unpickled.append(a), real(self, *a)))
    with pytest.raises(CheckpointError, match="digest"):
        ck.load(1, _target())
    assert unpickled == []


def test_bytes_no_request_needs_are_verified_too(tmp_path):
    """A rank that loads part of a file (resharding, here a subset of the keys) still checks
    the whole file: damage outside what it reads fails its load."""
    ck = CheckpointStore(tmp_path, rank=0, world_size=1)
    ck.save(1, _state(1), {"rng": 1}, {})
    path = _data_file(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-10] ^= 1  # inside "big", the last tensor written
    path.write_bytes(bytes(data))
    partial = {"model": {"count": torch.tensor(0, dtype=torch.int64)}}
    with pytest.raises(CheckpointError, match="digest"):
        ck.load(1, partial)


def test_dcp_checkpoints_of_the_torch_save_format_with_sha256_still_load(tmp_path):
    """Checkpoints written before raw files (DCP's torch.save entries, SHA-256 in the record)."""
    import io

    import torch.distributed.checkpoint as dcp

    from hpcorch.util.fileio import atomic_write

    d = CheckpointLayout(tmp_path).step_dir(5)
    dcp.save(_state(5), storage_writer=dcp.FileSystemWriter(d), no_dist=True)
    buf = io.BytesIO()
    torch.save({"rng": 5}, buf)
    atomic_write(d / "rank_00000.pt", buf.getvalue())
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in d.iterdir() if p.is_file()}
    atomic_write(d / COMMIT, json.dumps({"step": 5, "world_size": 1, "files": files}))
    ck = CheckpointStore(tmp_path, rank=0, world_size=1)
    got, local, _ = ck.load(5, _target())
    assert _equal(got, _state(5)) and local == {"rng": 5}
    (d / "__0_0.distcp").write_bytes(b"x" + (d / "__0_0.distcp").read_bytes()[1:])
    with pytest.raises(CheckpointError, match="digest"):
        ck.load(5, _target())


def test_a_stock_dcp_reader_refuses_raw_entries_instead_of_misreading_them(tmp_path):
    import torch.distributed.checkpoint as dcp

    ck = CheckpointStore(tmp_path, rank=0, world_size=1)
    ck.save(1, _state(1), {"rng": 1}, {})
    with pytest.raises(dcp.api.CheckpointException) as info:
        dcp.load(_target(), storage_reader=dcp.FileSystemReader(CheckpointLayout(tmp_path).step_dir(1)),
                 no_dist=True)
    assert "hpcorch.raw" in str(info.value.failures[0][0])


def test_pruned_checkpoints_are_uncommitted_at_once_and_gone_after_wait(tmp_path):
    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=1)
    for step in (1, 2, 3):
        ck.save(step, _state(step), {"rng": step}, {})
        assert ck.committed_steps() == [step]  # the older marker went before save returned
    ck.wait()
    assert sorted(CheckpointLayout(tmp_path).step_dirs()) == [3]
