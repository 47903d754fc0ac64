"""The per-area service modules (profiles, nodes, catalog, manifests, health, devcluster, remote)
as a Python API: plain data back, HpcorchError for bad input; no CLI, no scheduler, no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from hpcorch.errors import ConfigError, HpcorchError
from hpcorch.service import catalog, devcluster, health, manifests, nodes, profiles, remote


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCORCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_profiles_are_data():
    rows = {r["name"]: r for r in profiles.list_profiles()}
    assert rows["devcluster"]["scheduler"] == "slurm" and rows["devcluster"]["nodes"] == 4
    assert profiles.validate("devcluster") == {"profile": "devcluster", "ok": True, "nodes": 4,
                                               "partitions": len(rows["devcluster"]["partitions"])}
    assert profiles.show("local")["name"] == "local" and "name: local" in profiles.as_yaml(profiles.show("local"))
    assert profiles.name_of(None) is None and profiles.name_of("devcluster") == "devcluster"
    with pytest.raises(ConfigError):
        profiles.validate("no-such-profile")


def test_discover_refuses_to_overwrite_before_asking_slurm(tmp_path):
    existing = tmp_path / "p.yaml"
    existing.write_text("x")
    with pytest.raises(ConfigError, match="--force"):
        profiles.discover(output=existing)
    assert existing.read_text() == "x"


def test_slurm_conf_writes_the_files(tmp_path):
    written = {p.name for p in profiles.slurm_conf("devcluster", tmp_path / "conf")}
    assert {"slurm.conf", "gres.conf", "topology.conf"} <= written


def test_quarantine_lists_flags_lemons_and_releases():
    from hpcorch.state.registry import Registry

    registry = Registry()
    registry.quarantine("devcluster", "n1", "bad gpu", 1, "12")
    registry.quarantine("devcluster", "n1", "bad gpu again", 1)
    found = nodes.quarantined("devcluster")
    assert found["profile"] == "devcluster"
    assert [(q["node"], q["active"], q["lemon"]) for q in found["nodes"]] == [("n1", True, True)]
    assert len(nodes.quarantined(history=True)["nodes"]) == 2
    assert nodes.release("n1", "devcluster") == "devcluster"
    assert nodes.quarantined()["nodes"] == []
    with pytest.raises(HpcorchError, match="not in quarantine for profile devcluster"):
        nodes.release("n1", "devcluster")


def test_catalog_lists_the_shipped_jobs():
    rows = {r["name"]: r for r in catalog.jobs()}
    assert rows["gpt-tiny"]["nodes"] == 1 and rows["gpt-tiny"]["parameters"] > 0


def test_manifests_of_a_run_without_attempts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.yaml").write_text("name: x\n")
    assert manifests.attempts(str(run)) == {"manifests": [], "warnings": []}


def test_health_refuses_bad_input_as_one_error(tmp_path, monkeypatch):
    with pytest.raises(HpcorchError, match="--root: expected a directory"):
        health.check("local", root=tmp_path / "missing")
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(HpcorchError, match="SLURM_PROCID is not set"):
        health.check("local", allreduce=True)


def test_devcluster_status_and_env_without_a_cluster(tmp_path):
    state = devcluster.status("devcluster", tmp_path / "dev")
    assert state["state_dir"] == str(tmp_path / "dev") and state["up"] is False
    assert set(state["daemons"]) >= {"slurmctld", "slurmdbd"}
    assert devcluster.env_line("devcluster", tmp_path / "dev").startswith("export SLURM_CONF=")


def test_remote_without_agents():
    assert remote.agents() == []
    assert remote.disconnect_all() == []


def test_the_area_modules_import_neither_torch_nor_submitit_nor_paramiko():
    code = ("import sys\nimport hpcorch.service.profiles, hpcorch.service.nodes, hpcorch.service.catalog, "
            "hpcorch.service.manifests, hpcorch.service.health, hpcorch.service.devcluster, hpcorch.service.remote\n"
            "print(sorted(m for m in ('torch', 'submitit', 'paramiko', 'plotext') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
