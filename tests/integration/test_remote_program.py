"""``program:`` jobs and sweeps operated from a laptop through a real OpenSSH sshd on loopback
(the login node: this machine, the real dev cluster behind it, a registry of its own).

A program job: its code folder (``--code``) is synced to the login node and the job's relative
``program.code_dir`` resolves there; status (the program's steps, through hpcorch.runtime) and
logs come back through the login node's own hpcorch. A sweep is planned and recorded on the
login node: ``hpcorch sweep`` from a machine that would submit over SSH refuses in one line,
and ``hpcorch remote run PROFILE -- python -m hpcorch sweep ...`` is the way (tested here)."""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_remote_slurm import _profile, _submitted, _wait_state, jobs, login_node  # noqa: F401 (fixtures)
from test_remote_ssh import one_line_error
from trainhelp import REPO, TINY

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

STEPS = 20
PROGRAM = ["resources.nodes=1", "resources.tasks_per_node=2", "resources.time=5", "health.preflight=false",
           f"program.steps={STEPS}", "program.code_dir=.",
           f'program.args=["--steps", "{STEPS}", "--ckpt-every", "10", "--step-sleep", "0.05"]']


def _sets(values) -> list[str]:
    return [a for s in values for a in ("--set", s)]


def _code(tmp_path):
    """The user's project folder: the runtime example and the plain script it builds on."""
    code = tmp_path / "project"
    code.mkdir()
    for name in ("ddp_plain.py", "ddp_runtime.py"):
        shutil.copy(REPO / "examples" / name, code / name)
    return code


def test_program_job_syncs_its_code_runs_and_reports_through_ssh(login_node, laptop, jobs, tmp_path):
    laptop.add_host(login_node, "cluster")
    profile = _profile(laptop, login_node, "cluster")
    job = REPO / "examples" / "ddp_runtime.yaml"
    # The job's code folder is relative: without --code it would resolve in the login node's
    # workdir, where the program is not. Refused here, before anything connects.
    line = one_line_error(laptop.cli("submit", job, "-p", profile, "--remote", *_sets(PROGRAM)))
    assert "program.code_dir" in line and "--code" in line, line
    code, run = _code(tmp_path), tmp_path / "run"
    info = _submitted(laptop, laptop.cli("submit", job, "-p", profile, "--remote", "--code", code, "--run-dir", run,
                                         "--json", *_sets(PROGRAM)), jobs)
    key = str(info["key"])
    assert info["host"].endswith(f"127.0.0.1:{login_node.port}") and info["run_dir"] == str(run)
    synced = login_node.root / "work" / "code" / "project"
    assert (synced / "ddp_runtime.py").read_bytes() == (code / "ddp_runtime.py").read_bytes()
    done = _wait_state(laptop, key, {"COMPLETED"})
    assert (done["step"], done["steps"], done["latest_checkpoint"]) == (STEPS, STEPS, STEPS), done
    assert done["host"] == info["host"] and done["run_dir"] == str(run)
    # the job ran in the synced copy, not in a folder of the laptop
    assert yaml.safe_load((run / "job.yaml").read_text())["program"]["code_dir"] == str(synced)
    logs = laptop.cli("logs", key)
    assert logs.returncode == 0, logs.stderr
    weights = (run / "checkpoints" / "final.sha256").read_text().strip()
    assert f"done: step {STEPS}, weights {weights}" in logs.stdout, logs.stdout[-2000:]
    listed = laptop.cli("ls").stdout
    assert f"{info['host']}:{run}" in listed and "COMPLETED" in listed, listed


POINT = ["resources.nodes=1", "resources.tasks_per_node=1", "trainer.global_batch=4", "trainer.steps=12",
         "health.preflight=false"]


def _sweep_status(laptop, name) -> dict:
    out = laptop.cli("sweep", "status", name, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sweep_is_submitted_and_read_on_the_login_node_through_ssh(login_node, laptop, jobs, tmp_path):
    laptop.add_host(login_node, "cluster")
    profile = _profile(laptop, login_node, "cluster")
    root = tmp_path / "sw"  # a path on the login node (the same disk here)
    sets = _sets(TINY + POINT)
    check = laptop.cli("sweep", "gpt-tiny", "-p", profile, "--remote", "--name", "sw", "--root", root,
                       "--grid", "trainer.seed=1,2", "--check", *sets)
    assert check.returncode == 0 and check.stdout.count("to start at") == 1, check.stdout + check.stderr
    assert not root.exists()
    out = laptop.cli("sweep", "gpt-tiny", "-p", profile, "--remote", "--name", "sw", "--root", root,
                     "--grid", "trainer.seed=1,2", "--json", *sets)
    assert out.returncode == 0, out.stdout + out.stderr
    info = json.loads(out.stdout)
    jobs.ids.extend(a["id"] for a in info["arrays"])
    assert info["root"] == str(root) and info["host"].endswith(f"127.0.0.1:{login_node.port}"), info
    # recorded on the login node (its registry, its sweep.json); its points registered here as
    # remote jobs, as a remote submit's job is: ls lists them (one sweep line), status takes their numbers
    assert json.loads((root / "sweep.json").read_text())["name"] == "sw"
    listed = json.loads(laptop.cli("ls", "--json").stdout)
    assert sorted(r["name"] for r in listed) == ["sw/000-seed=1", "sw/001-seed=2"], listed
    assert {(r["sweep"], r["host"], r["profile"]) for r in listed} == {("sw", info["host"], str(profile))}, listed
    assert {str(Path(r["run_dir"]).parent) for r in listed} == {str(root)}, listed
    line = [ln for ln in laptop.cli("ls").stdout.splitlines()[1:] if ln.strip()]
    assert len(line) == 1 and " sw " in f" {line[0]} ", line  # one sweep line; --expand: one per point
    point = laptop.cli("status", str(listed[0]["key"]), "--json")
    assert point.returncode == 0 and json.loads(point.stdout)["run_dir"] == listed[0]["run_dir"], point.stderr

    def completed():
        rows = _sweep_status(laptop, "sw")["rows"]
        states = {r["state"] for r in rows}
        if states & {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}:
            raise AssertionError(rows)
        return rows if states == {"COMPLETED"} and all(r["done"] for r in rows) else None

    from hpcorch.util.poll import poll_until

    rows = poll_until(completed, 240, interval_s=1.0, what="remote sweep sw completed")
    assert [r["name"] for r in rows] == ["000-seed=1", "001-seed=2"], rows
    for row in rows:
        summary = json.loads((root / row["name"] / "summary.json").read_text())
        assert row["step"] == summary["final_step"] == 12 and row["final_loss"] == summary["final_loss"], row
    table = laptop.cli("sweep", "status", "sw").stdout
    assert table.startswith(f"sweep sw ({info['host']}:{root})") and table.count("COMPLETED (done)") == 2, table
    resumed = laptop.cli("sweep", "resume", "sw")
    assert resumed.returncode == 0 and resumed.stdout.startswith("sweep sw: nothing to resume"), resumed
    cancelled = laptop.cli("sweep", "cancel", "sw", "--point", "1")  # forwarded too; nothing live to end
    assert cancelled.returncode == 0, cancelled.stderr
    assert {r["state"] for r in _sweep_status(laptop, "sw")["rows"]} == {"COMPLETED"}
    listed = json.loads(laptop.cli("ls", "--json").stdout)
    assert [r["state"] for r in listed] == ["COMPLETED", "COMPLETED"], listed  # adopted once, not again


def test_a_program_sweep_from_a_list_runs_its_synced_code_on_the_login_node(login_node, laptop, jobs, tmp_path):
    """The user's own script as a sweep: --list's points and --code's folder travel; each point
    runs the synced copy; status (the program's steps, via hpcorch.runtime) comes back."""
    laptop.add_host(login_node, "cluster")
    profile = _profile(laptop, login_node, "cluster")
    points = tmp_path / "points.txt"
    points.write_text("".join(f'\'program.args=[--steps,"10",--ckpt-every,"5",--seed,"{seed}"]\'\n' for seed in (1, 2)))
    root = tmp_path / "psw"
    sets = _sets([p for p in PROGRAM if not p.startswith(("program.args", "program.steps"))] + ["program.steps=10"])
    out = laptop.cli("sweep", REPO / "examples" / "ddp_runtime.yaml", "-p", profile, "--remote", "--code",
                     _code(tmp_path), "--name", "psw", "--root", root, "--list", points, "--json", *sets)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs.ids.extend(a["id"] for a in json.loads(out.stdout)["arrays"])

    def completed():
        rows = _sweep_status(laptop, "psw")["rows"]
        if {r["state"] for r in rows} & {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}:
            raise AssertionError(rows)
        return rows if all(r["state"] == "COMPLETED" for r in rows) else None

    from hpcorch.util.poll import poll_until

    rows = poll_until(completed, 240, interval_s=1.0, what="remote program sweep psw completed")
    assert [r["step"] for r in rows] == [10, 10], rows
    weights = {(root / r["name"] / "checkpoints" / "final.sha256").read_text() for r in rows}
    assert len(weights) == 2  # two seeds, two models
    synced = str(login_node.root / "work" / "code" / "project")
    assert all(yaml.safe_load((root / r["name"] / "job.yaml").read_text())["program"]["code_dir"] == synced
               for r in rows)
