"""The checkpoint store's protocol in one process: commit marker, digests, pruning, async."""
import json

import pytest
import torch

from hpcorch.state.rundir import COMMIT_MARKER as COMMIT
from hpcorch.state.rundir import CheckpointLayout
from hpcorch.train.checkpoint.store import CheckpointError, CheckpointStore


def step_dir(root, step):
    return CheckpointLayout(root).step_dir(step)


def _state(step):
    return {"model": {"w": torch.full((256,), float(step))}}


def _save(ck, step):
    ck.save(step, _state(step), {"rng": step}, {"note": step})


@pytest.mark.parametrize("async_save", [False, True])
def test_keep_last_k_after_commit(tmp_path, async_save):
    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=2, async_save=async_save)
    for step in (10, 20, 30):
        _save(ck, step)
    ck.wait()
    assert ck.committed_steps() == [20, 30]
    step, shared, local, record = ck.load_latest()
    assert step == 30 and shared["model"]["w"][0] == 30 and local == {"rng": 30} and record["note"] == 30


def test_uncommitted_is_ignored(tmp_path):
    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=3)
    _save(ck, 10)
    _save(ck, 20)
    (step_dir(tmp_path, 20) / COMMIT).unlink()
    assert ck.load_latest()[0] == 10


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupted_latest_falls_back(tmp_path, damage):
    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=3)
    _save(ck, 10)
    _save(ck, 20)
    target = step_dir(tmp_path, 20) / "__0_0.distcp"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        target.unlink()
    messages = []
    assert ck.load_latest(log=messages.append)[0] == 10
    assert "skipping corrupted checkpoint" in messages[0]
    with pytest.raises(CheckpointError):
        ck.load(20)


def test_commit_waits_for_every_rank(tmp_path):
    ck0 = CheckpointStore(tmp_path, rank=0, world_size=2, keep=2, commit_timeout_s=0.5)
    with pytest.raises(CheckpointError, match="rank 1 did not finish"):
        _save(ck0, 10)
    assert ck0.committed_steps() == []
    CheckpointStore(tmp_path, rank=1, world_size=2).save(20, None, {"rng": 1}, {})
    _save(ck0, 20)
    record = json.loads((step_dir(tmp_path, 20) / COMMIT).read_text())
    assert set(record["files"]) == {"__0_0.distcp", ".metadata", "rank_00000.pt", "rank_00001.pt"}



def _disk_full_for(monkeypatch, name):
    """Writing ``name`` fails as on a full disk."""
    import errno

    import hpcorch.train.checkpoint.dcpio as dcpio
    import hpcorch.train.checkpoint.store as store

    real, real_open = store.atomic_write, dcpio.open if hasattr(dcpio, "open") else open

    def write(path, data, **kwargs):
        if path.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kwargs)

    def opener(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(store, "atomic_write", write)
    monkeypatch.setattr(dcpio, "open", opener, raising=False)


@pytest.mark.parametrize("async_save", [False, True])
def test_a_failed_save_cleans_up_says_why_and_keeps_the_previous(tmp_path, monkeypatch, async_save):
    from hpcorch.train.checkpoint.store import SaveFailed

    votes = []
    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=2, async_save=async_save,
                         agree=lambda ok, own=True: votes.append(ok) or (None if ok else 0))
    _save(ck, 10)
    ck.wait()
    _disk_full_for(monkeypatch, "__0_0.distcp")
    with pytest.raises(SaveFailed, match=r"^checkpoint save to .*step_000000020 failed: no space left on "
                                         r"device on /\S* \(\w+\): needs ~[\d.]+ kB, [\d.]+ \w?B free$"):
        _save(ck, 20)
        ck.wait()
    assert votes == ([] if async_save else [True, True, False])  # async: no collective in the thread
    assert not step_dir(tmp_path, 20).exists()
    assert ck.load_latest()[0] == 10


def test_a_peers_failure_stops_this_rank_and_removes_its_part(tmp_path):
    from hpcorch.train.checkpoint.store import PeerSaveFailed

    ck = CheckpointStore(tmp_path, rank=1, world_size=2, agree=lambda ok, own=True: 0)
    with pytest.raises(PeerSaveFailed, match="another rank could not write its part of step 20"):
        ck.save(20, None, {"rng": 1}, {})
    assert not list(step_dir(tmp_path, 20).iterdir())


def test_export_writes_the_canonical_weights_and_errors_are_one_line(tmp_path):
    from hpcorch import service
    from hpcorch.errors import HpcorchError
    from hpcorch.train.checkpoint.checkpointer import weights_digest

    root = tmp_path / "run"
    ck = CheckpointStore(root / "checkpoints", rank=0, world_size=1)
    w = torch.arange(6.0).reshape(2, 3)
    ck.save(5, {"model": {"wte.weight": w, "ln_f.weight": torch.ones(3)}, "optim": {}}, {"rng": 0}, {})
    out = service.export(str(root), tmp_path / "out" / "model.pt")
    got = torch.load(out)
    assert set(got) == {"wte.weight", "ln_f.weight"} and torch.equal(got["wte.weight"], w)
    assert weights_digest(got) == weights_digest({"wte.weight": w, "ln_f.weight": torch.ones(3)})
    with pytest.raises(HpcorchError, match=r"no committed checkpoint at step 4 .*\(committed: \[5\]\)"):
        service.export(str(root), tmp_path / "x.pt", step=4)
    (root / "empty").mkdir()
    with pytest.raises(HpcorchError, match="no committed checkpoint in"):
        service.export(str(root / "empty"), tmp_path / "x.pt")


def test_export_to_safetensors_round_trips(tmp_path):
    from safetensors import safe_open

    from hpcorch import service
    from hpcorch.train.checkpoint.checkpointer import weights_digest

    root = tmp_path / "run"
    ck = CheckpointStore(root / "checkpoints", rank=0, world_size=1)
    state = {"wte.weight": torch.randn(4, 3), "blocks.0.mlp.fc.weight": torch.randn(5, 3)}
    ck.save(7, {"model": state, "optim": {}}, {"rng": 0}, {})
    out = service.export(str(root), tmp_path / "model.safetensors")
    assert out.suffix == ".safetensors"
    with safe_open(str(out), framework="pt") as f:
        got = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
        assert f.metadata()["tied"] == "head.weight=wte.weight" and f.metadata()["step"] == "7"
    assert weights_digest(got) == weights_digest(state)


def test_old_format_checkpoints_still_load(tmp_path):
    """A checkpoint written before DCP (rank 0's full state in shared.pt) loads as before."""
    import hashlib
    import io

    from hpcorch.util.fileio import atomic_write

    d = step_dir(tmp_path, 7)
    d.mkdir(parents=True)
    files = {}
    for name, obj in (("shared.pt", {"model": {"w": torch.ones(2)}, "optimizer": {}}), ("rank_00000.pt", {"rng": 1})):
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write(d / name, buf.getvalue())
        files[name] = {"size": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    atomic_write(d / COMMIT, json.dumps({"step": 7, "files": files}))
    step, shared, local, _ = CheckpointStore(tmp_path, rank=0, world_size=1).load_latest()
    assert step == 7 and torch.equal(shared["model"]["w"], torch.ones(2)) and local == {"rng": 1}


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_start_removes_what_dead_writers_left_and_nothing_of_a_live_one(tmp_path):
    """A prune killed halfway (an uncommitted folder older than the newest commit) and a commit
    marker's temporary file of a dead writer are removed at start; a live writer's file stays."""
    import os
    import socket

    ck = CheckpointStore(tmp_path, rank=0, world_size=1, keep=2)
    for step in (10, 20, 30):
        _save(ck, step)
    host = socket.gethostname().split(".")[0]
    half_pruned = step_dir(tmp_path, 5)
    half_pruned.mkdir()
    (half_pruned / "__0_0.distcp").write_bytes(b"x")
    dead = step_dir(tmp_path, 30) / f"{COMMIT}.{host}.{_dead_pid()}.1.tmp"
    live = step_dir(tmp_path, 30) / f"rank_00000.pt.{host}.{os.getpid()}.1.tmp"
    dead.write_text("{")
    live.write_text("x")
    ck.clean_leftovers()
    assert not half_pruned.exists() and not dead.exists() and live.exists()
    assert ck.committed_steps() == [20, 30] and ck.load_latest()[0] == 30
