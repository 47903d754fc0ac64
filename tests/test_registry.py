import json
import subprocess
import sys

import pytest

from hpcorch.errors import HpcorchError
from hpcorch.spec.job import RequeuePolicy
from hpcorch.registry import Registry
from hpcorch.submit.task import NotRequeued, RestartBudget

WRITER = """
import sys
from hpcorch.registry import Registry
reg = Registry(sys.argv[1])
for i in range(int(sys.argv[3])):
    reg.add(f"{sys.argv[2]}-{i}", "job", "local", "local", f"/runs/{sys.argv[2]}/{i}", "/j.yaml")
"""


def test_concurrent_writers_do_not_corrupt(tmp_path):
    db = tmp_path / "reg.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"w{n}", "40"]) for n in range(6)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    entries = Registry(db).all()
    assert len(entries) == 240
    assert len({e.key for e in entries}) == 240
    assert {e.job_id for e in entries} == {f"w{n}-{i}" for n in range(6) for i in range(40)}
    check = subprocess.run(["python3", "-c", f"import sqlite3; print(sqlite3.connect('{db}').execute("
                            "'PRAGMA integrity_check').fetchone()[0])"], capture_output=True, text=True, timeout=30)
    assert check.stdout.strip() == "ok"


def test_lookup_by_key_id_name_and_run_dir(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    a = reg.add("1001", "alpha", "devcluster", "slurm", str(tmp_path / "ra"), "/a.yaml")
    b = reg.add("1002", "alpha", "devcluster", "slurm", str(tmp_path / "rb"), "/b.yaml")
    assert reg.get(str(a.key)).job_id == "1001"
    assert reg.get("s1002").key == b.key and reg.get("1002").key == b.key
    assert reg.get("alpha").key == b.key  # the newest of that name
    assert reg.get(str(tmp_path / "ra")).key == a.key
    with pytest.raises(HpcorchError, match="no job"):
        reg.get("nope")


def test_restart_budgets_count_by_cause(tmp_path, monkeypatch):
    budget = RestartBudget(tmp_path, RequeuePolicy(max_preemptions=2, max_timeouts=1, max_node_failures=1))
    assert budget.spend("preemption") == "" and budget.spend("preemption") == ""
    assert "preemption budget spent (2 of 2)" in budget.spend("preemption")
    assert budget.spend("timeout") == "" and "timeout budget spent" in budget.spend("timeout")
    data = json.loads((tmp_path / "restarts.json").read_text())
    assert (data["preemption"], data["timeout"], data["node_failure"]) == (2, 1, 0)
    # Slurm restarted the job 4 times, 3 of them ours: the 4th was a node failure.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "4")
    budget.account_unplanned_restart()
    assert budget.load()["node_failure"] == 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "5")
    with pytest.raises(NotRequeued, match="node_failure budget spent"):
        budget.account_unplanned_restart()
