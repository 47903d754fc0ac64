"""A sweep on the local profile: a background runner submits the points as local jobs, K at a
time; each ends with its completion marker and its row in `hpcorch sweep status`."""
import json
import os
import time

import pytest
from conftest import run_cli
from trainhelp import TINY

pytestmark = pytest.mark.timeout(300)


def test_local_sweep_runs_the_points_k_at_a_time(tmp_path):
    env = {"HPCORCH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    sets = [a for s in TINY + ["trainer.steps=12", "resources.tasks_per_node=1", "trainer.global_batch=4"]
            for a in ("--set", s)]
    out = run_cli("sweep", "jobs/gpt-tiny.yaml", "-p", "local", "--name", "loc", "--root", tmp_path / "loc",
                  "--grid", "trainer.seed=1,2", "--max-parallel", "1", *sets, env=env)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "loc" / "sweep.json").read_text())
    runner = int(record["arrays"][0]["id"].split(":")[1])
    deadline = time.monotonic() + 240
    while len(list((tmp_path / "loc" / "array" / "done").iterdir())) < 2:
        assert time.monotonic() < deadline, (tmp_path / "loc" / "logs" / "local_runner.log").read_text()
        time.sleep(1)
    while time.monotonic() < deadline:  # the runner ends once its last point did
        try:
            os.kill(runner, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    info = json.loads(run_cli("sweep", "status", "loc", "--json", env=env).stdout)
    for row in info["rows"]:
        summary = json.loads((tmp_path / "loc" / row["name"] / "summary.json").read_text())
        assert row["done"] and row["final_loss"] == summary["final_loss"], row
    # One point at a time: the second started after the first's summary was written.
    first, second = (tmp_path / "loc" / n for n in ("000-seed=1", "001-seed=2"))
    assert (first / "summary.json").stat().st_mtime <= min(p.stat().st_mtime for p in second.glob("*.jsonl"))
    assert run_cli("sweep", "resume", "loc", env=env).stdout.startswith("sweep loc: nothing to resume")
