"""Pre-flight health, quarantine and placement on the real dev cluster. Each emulated node's
hardware lives under its own root (``STATE/nodes/NODE``: GPU device files, InfiniBand port
files; the TaskProlog points HPCORCH_SYSTEM_ROOT there), so a fault is injected on one node by
editing its files, and undone after the test."""
import json
from pathlib import Path

import pytest
import yaml
from test_submit import _finish, _summary, ctx, reference  # noqa: F401 (fixtures)
from trainhelp import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(480)]


@pytest.fixture
def node_root(devcluster):
    """The emulated hardware root of a node; whatever a test breaks there is restored."""
    saved: dict[Path, bytes | None] = {}

    def root(node: str) -> Path:
        return devcluster.local.state_dir / "nodes" / node

    def save(path: Path) -> Path:
        if path not in saved:
            saved[path] = path.read_bytes() if path.exists() and not path.is_char_device() else None
        return path

    root.save = save
    removed: list[tuple[Path, int]] = []

    def hide(path: Path) -> None:
        removed.append((path, path.stat().st_rdev))
        path.unlink()

    root.hide = hide
    yield root
    for path, data in saved.items():
        if data is not None:
            path.write_bytes(data)
    import os

    for path, rdev in removed:
        if not path.exists():
            os.mknod(path, 0o666 | 0o020000, rdev)


def _reports(run: Path, attempt: int) -> dict[str, dict]:
    folder = run / "health" / f"attempt-{attempt}"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_healthy_nodes_pass_in_seconds_and_the_job_records_where_it_landed(ctx, tmp_path, reference):
    run = tmp_path / "run"
    job = ctx.submit(run)
    _finish(ctx, job["job_id"])
    assert _summary(run)["weights_sha256"] == reference["weights_sha256"]
    reports = _reports(run, 0)
    assert len(reports) == 2 and all(r["ok"] for r in reports.values()), reports
    assert all(r["wall_s"] < 30 for r in reports.values())
    names = {c["name"] for c in next(iter(reports.values()))["checks"]}
    assert {"ib.mlx5_0/1.state", "ib.mlx5_0/1.rate", "host.disk", "allreduce.busbw"} <= names
    status = json.loads(ctx.cli("status", str(run), "--json").stdout)
    assert status["placement"].startswith("2 nodes on 1 leaf switch"), status["placement"]


@pytest.mark.parametrize("fault", ["gpu-hidden", "ib-port-down"])
def test_a_node_failing_preflight_is_quarantined_and_the_job_completes_without_it(
        ctx, tmp_path, reference, node_root, fault):
    from hpcorch.spec.units import expand_hostlist

    bad = "node1"  # first fit: the job meets it
    if fault == "gpu-hidden":
        node_root.hide(node_root(bad) / "dev" / "nvidia1")
        extra, check = ["resources.gpus_per_node=2"], "gpus"
    else:
        port = node_root.save(node_root(bad) / "sys/class/infiniband/mlx5_0/ports/1/state")
        port.write_text("1: DOWN\n")
        extra, check = [], "ib.mlx5_0/1.state"
    run = tmp_path / "run"
    job = ctx.submit(run, *extra)
    _finish(ctx, job["job_id"], timeout_s=300)
    first = _reports(run, 0)
    assert bad in first and not first[bad]["ok"] and check in first[bad]["failed"], first
    assert all(r["ok"] for node, r in first.items() if node != bad)  # no false positive beside it
    assert bad not in expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])
    assert all(r["ok"] for r in _reports(run, 1).values())
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"] and got["steps_recomputed"] == 0
    listed = json.loads(ctx.cli("nodes", "list", "--json").stdout)
    assert [q["node"] for q in listed] == [bad] and check in listed[0]["reason"]
    assert json.loads((run / "restarts.json").read_text())["node_failure"] == 1


def _profile_with(tmp_path, **health) -> Path:
    """The devcluster profile (same name, same cluster) with other health floors."""
    data = yaml.safe_load((REPO / "hpcorch/profiles/devcluster.yaml").read_text())
    data["health"] = health
    path = tmp_path / "devcluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("floor, check", [({"min_free_disk_gb": 1e9}, "host.disk"),
                                          ({"min_busbw_gbps": 1e6}, "allreduce.busbw")])
def test_a_floor_every_node_misses_stops_the_job_instead_of_quarantining(ctx, tmp_path, floor, check):
    from test_submit import _sets

    run = tmp_path / "run"
    ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", _profile_with(tmp_path, **floor), "--run-dir", run, *_sets())
    job = ctx.entry(str(run))
    assert ctx.slurm.wait_for(job["job_id"], {"FAILED", "COMPLETED"}, timeout_s=120) == "FAILED"
    reports = _reports(run, 0)
    assert len(reports) == 2 and all(check in r["failed"] for r in reports.values()), reports
    note = json.loads((run / "restarts.json").read_text())["refused"]
    assert note.startswith("pre-flight failed on every node alike") and check in note
    assert json.loads(ctx.cli("nodes", "list", "--json").stdout) == []
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def test_two_node_jobs_land_on_one_leaf_when_first_fit_would_span_both(ctx, tmp_path):
    """node2 busy: first fit would take node1 + node3 (two leaves); --switches=1 asks for one."""
    from test_submit import _sets

    blocker = ctx.jobs.submit("#!/bin/bash\nsleep 300\n", "-w", "node2", "-N1", "--exclusive", "--output=/dev/null")
    ctx.slurm.wait_for(blocker, "RUNNING", timeout_s=60)
    dry = ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", tmp_path / "dry", *_sets(),
                  "--dry-run").stdout
    assert "#SBATCH --switches=1@00:10:00\n" in dry
    ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", tmp_path / "dry", *_sets(),
            "--check")  # sbatch --test-only accepts the script, --switches included
    for trial in range(3):
        run = tmp_path / f"run{trial}"
        job = ctx.submit(run, "trainer.steps=4", "trainer.checkpoint.interval=4")
        _finish(ctx, job["job_id"])
        status = json.loads(ctx.cli("status", str(run), "--json").stdout)
        assert status["placement"] == "2 nodes on 1 leaf switch (leaf2)", status
    ctx.slurm.cancel(blocker)
