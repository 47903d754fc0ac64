"""``hpcorch data prepare -p devcluster``: one Slurm job array on the real dev cluster writes
shards and dataset.json byte-identical to a local prepare; a cancelled task is rerun alone
(the other shards untouched), and ``data status|logs|cancel`` see it so; a finished prepare
submits nothing."""
from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import pytest
from conftest import run_cli

from hpcorch.data import prepare as prep
from hpcorch.service import data as service
from hpcorch.util.poll import poll_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]
SHARD_BYTES = 48 << 10


def _corpus(root: Path) -> Path:
    """Eight stdlib files of a third to a half of SHARD_BYTES each: two per shard, four shards."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    src = root / "corpus"
    src.mkdir(parents=True)
    picked = [p for p in sorted(stdlib.glob("*.py")) if SHARD_BYTES / 3 < p.stat().st_size <= SHARD_BYTES / 2][:8]
    assert len(picked) == 8
    for p in picked:
        (src / p.name).write_bytes(p.read_bytes())
    return src


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _wait_done(out: Path, shards: int, slurm, array: str, timeout_s: float = 240) -> None:
    def finished():
        left = slurm.array_tasks(array)
        active = [t for t, state in left.items() if state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]
        return not active or None

    poll_until(finished, timeout_s, interval_s=1.0, what=f"array {array} finished")
    logs = "\n".join(p.read_text()[-400:] for p in (out / "prepare" / "logs").glob("*.err"))
    assert len(prep.load_plan(out).tasks.done()) == shards, logs


def test_array_equals_local_and_reruns_only_the_cancelled_task(tmp_path, slurm, devcluster):
    env = {"SLURM_CONF": str(devcluster.etc / "slurm.conf")}
    src = _corpus(tmp_path)
    local = service.prepare([str(src)], tmp_path / "local", shard_bytes=SHARD_BYTES)
    assert local.shards == 4, local.shards
    out = tmp_path / "array"
    args = ["data", "prepare", src, "--out", out, "--shard-bytes", SHARD_BYTES, "-p", "devcluster", "--json"]

    # First submission, throttled to one task at a time; the last task is cancelled while it waits.
    first = run_cli(*args, "--max-parallel", "1", env=env)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["ran"] == prep.load_plan(out).shard_names and len(result["arrays"]) == 1
    array = result["arrays"][0]
    slurm.run("scancel", f"{array}_3")
    # While tasks of it are queued, a rerun would run their shards twice: refused.
    slurm.run("scontrol", "hold", array, check=False)
    busy = run_cli(*args, env=env)
    slurm.run("scontrol", "release", array, check=False)  # tasks that finished meanwhile: an error line
    assert busy.returncode == 2 and f"array {array} still has" in busy.stderr, busy.stdout + busy.stderr
    _wait_done(out, 3, slurm, array)
    assert not (out / "dataset.json").exists()
    shown = run_cli("data", "show", out, env=env)
    assert "3 of 4 shards done" in shown.stdout
    # The prepare's own status and logs: the cancelled task failed (no marker), the others done.
    status = run_cli("data", "status", out, "--json", env=env)
    assert status.returncode == 0, status.stderr
    rows = {r["shard"]: r for r in json.loads(status.stdout)}
    assert rows["shard_00003"]["state"] == "failed" and rows["shard_00003"]["task"] == f"{array}_3", rows
    assert [rows[f"shard_0000{i}"]["state"] for i in range(3)] == ["done"] * 3, rows
    logs = run_cli("data", "logs", out, "--task", "0", env=env)
    assert logs.returncode == 0 and f"{array}_0.err <==" in logs.stdout, logs.stderr
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*")}

    # The rerun submits the cancelled task alone; the others' files stay as they were.
    second = run_cli(*args, env=env)
    assert second.returncode == 0, second.stderr
    rerun = json.loads(second.stdout)
    assert rerun["ran"] == ["shard_00003"], rerun
    _wait_done(out, 4, slurm, rerun["arrays"][0])
    poll_until(lambda: (out / "dataset.json").exists() or None, 30, what="dataset.json")
    assert _digest(out) == _digest(tmp_path / "local")
    for name, mtime in mtimes.items():
        assert (out / name).stat().st_mtime_ns == mtime, name

    # Finished: nothing is submitted, and it says so.
    runs = sorted((out / "prepare" / "tasks" / "runs").iterdir())
    third = run_cli(*args[:-1], env=env)
    assert third.returncode == 0 and "nothing to do" in third.stdout, third.stdout + third.stderr
    assert sorted((out / "prepare" / "tasks" / "runs").iterdir()) == runs
    idle = run_cli("data", "cancel", out, env=env)
    assert idle.returncode == 0 and "nothing to cancel" in idle.stdout, idle.stdout + idle.stderr


def test_four_task_array_equals_local(tmp_path, slurm, devcluster):
    env = {"SLURM_CONF": str(devcluster.etc / "slurm.conf")}
    src = _corpus(tmp_path)
    service.prepare([str(src)], tmp_path / "local", shard_bytes=SHARD_BYTES, processes=2)
    out = tmp_path / "array"
    check = run_cli("data", "prepare", src, "--out", out, "--shard-bytes", SHARD_BYTES, "-p", "devcluster",
                    "--check", env=env)
    assert check.returncode == 0 and "4 of 4 shards" in check.stdout, check.stderr
    done = run_cli("data", "prepare", src, "--out", out, "--shard-bytes", SHARD_BYTES, "-p", "devcluster",
                   "--max-parallel", "4", "--json", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    _wait_done(out, 4, slurm, result["arrays"][0])
    poll_until(lambda: (out / "dataset.json").exists() or None, 30, what="dataset.json")
    assert _digest(out) == _digest(tmp_path / "local")
