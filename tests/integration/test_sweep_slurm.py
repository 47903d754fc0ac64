"""hpcorch sweep on the real dev cluster: one throttled array per resource shape, each point a
whole job; resume submits only the points that did not complete; a requeue (USR2 to the task
whose job id is the array's own id, a killed rank of another) restarts that task alone; --check
asks Slurm (sbatch --test-only) and says yes or, in one line, why not."""
import json
import os
import signal
import time

import psutil
import pytest
import yaml
from test_submit import ctx  # noqa: F401 (fixture)
from trainhelp import REPO, TINY

from hpcorch.util.poll import poll_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

POINT = ["resources.nodes=1", "resources.tasks_per_node=1", "trainer.global_batch=4"]


def _sweep(ctx, tmp_path, name, *args):
    sets = [a for s in TINY + POINT for a in ("--set", s)]
    started = time.monotonic()
    out = ctx.cli("sweep", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--name", name, "--root", tmp_path / name,
                  *sets, *args)
    return out, time.monotonic() - started


def _status(ctx, name):
    return json.loads(ctx.cli("sweep", "status", name, "--json").stdout)


def _tasks(ctx, array_ids):
    out = ctx.slurm.run("squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(array_ids))
    return {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines()}


def _wait_all(ctx, name, max_running=None, timeout_s=240):
    """Until every submitted point ended; polls squeue -r every 0.5 s, cutting Slurm's hold on
    a requeued task, and returns the most tasks seen running at once (per array)."""
    most: dict[str, int] = {}

    def ended():
        arrays = [a["id"] for a in json.loads((ctx.root(name) / "sweep.json").read_text())["arrays"]]
        tasks = _tasks(ctx, arrays)
        for array in arrays:
            running = sum(1 for t, (state, _) in tasks.items() if t.startswith(f"{array}_") and state == "RUNNING")
            most[array] = max(most.get(array, 0), running)
        for task, (state, reason) in tasks.items():
            if state == "PENDING" and "BeginTime" in reason:
                ctx.slurm.start_now(task)
        live = [t for t, (state, _) in tasks.items() if state in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING",
                                                                     "CONFIGURING", "SUSPENDED")]
        return not live or None

    poll_until(ended, timeout_s, interval_s=0.5, what=f"sweep {name} ended")
    return most


@pytest.fixture
def sctx(ctx, tmp_path):
    ctx.root = lambda name: tmp_path / name
    return ctx


def test_throttled_sweep_status_and_resume_only_the_cancelled(sctx, tmp_path):
    ctx = sctx
    out, took = _sweep(ctx, tmp_path, "lr", "--grid", "trainer.optimizer.lr=1e-3,2e-3", "--grid", "trainer.seed=1,2",
                       "--max-parallel", "2", "--set", "environment.HPCORCH_STEP_DELAY_S=0.1")
    assert took < 15, took  # 4 points: one sbatch (the issue asks < 5 s for 6 points; this box is shared)
    record = json.loads((tmp_path / "lr" / "sweep.json").read_text())
    assert len(record["arrays"]) == 1 and len(record["points"]) == 4
    array = record["arrays"][0]["id"]
    ctx.jobs.ids.append(array)
    # Points 2 and 3 wait behind the %2 throttle: cancel them.
    ctx.cli("sweep", "cancel", "lr", "--point", "2", "--point", "3")
    most = _wait_all(ctx, "lr")
    assert most[array] <= 2, most
    rows = {r["name"]: r for r in _status(ctx, "lr")["rows"]}
    states = [rows[n]["state"] for n in sorted(rows)]
    # A task cancelled while pending never ran: accounting may not know it (ENDED).
    assert states[:2] == ["COMPLETED", "COMPLETED"] and set(states[2:]) <= {"CANCELLED", "ENDED"}, states
    # Resume: exactly the two cancelled points, in one new array.
    out = ctx.cli("sweep", "resume", "lr").stdout
    assert "resubmitted 2 point(s): 002-lr=2e-3-seed=1, 003-lr=2e-3-seed=2" in out, out
    record = json.loads((tmp_path / "lr" / "sweep.json").read_text())
    assert len(record["arrays"]) == 2 and record["arrays"][1]["tasks"] == ["002-lr=2e-3-seed=1", "003-lr=2e-3-seed=2"]
    ctx.jobs.ids.append(record["arrays"][1]["id"])
    most = _wait_all(ctx, "lr")
    assert max(most.values()) <= 2, most
    info = _status(ctx, "lr")
    for row in info["rows"]:
        summary = json.loads((tmp_path / "lr" / row["name"] / "summary.json").read_text())
        assert row["state"] == "COMPLETED" and row["done"], row
        assert (row["step"], row["final_loss"], row["val_loss"]) == (summary["final_step"], summary["final_loss"],
                                                                     summary["val_loss"])
        assert row["tokens_per_s"] and row["goodput"] is not None
    assert ctx.cli("sweep", "resume", "lr").stdout.startswith("sweep lr: nothing to resume")
    # `hpcorch ls` shows the sweep as one line.
    listed = ctx.cli("ls").stdout
    assert "lr (sweep, 4 points" in listed, listed


def _rank_pid(job_raw_id: str) -> int:
    for proc in psutil.process_iter():
        try:
            cmd = proc.cmdline()
            if (proc.environ().get("SLURM_JOB_ID") == job_raw_id and cmd and "srun" not in cmd[0]
                    and "submitit.core._submit" in " ".join(cmd)):
                return proc.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no rank of job {job_raw_id}")


def test_a_point_is_requeued_alone(sctx, tmp_path):
    """Three identical points: USR2 to the task whose job id is the array's id, SIGKILL to the rank
    of another; both restart alone and end with the weights of the one left alone."""
    ctx = sctx
    points = tmp_path / "points.txt"
    points.write_text("trainer.seed=3\n" * 3)
    _sweep(ctx, tmp_path, "rq", "--list", points, "--set", "trainer.steps=40",
           "--set", "environment.HPCORCH_STEP_DELAY_S=0.15")
    array = json.loads((tmp_path / "rq" / "sweep.json").read_text())["arrays"][0]["id"]
    ctx.jobs.ids.append(array)
    runs = [tmp_path / "rq" / name for name in ("000", "001", "002")]

    def progressed():
        steps = [json.loads((r / "progress.json").read_text()).get("step", 0) if (r / "progress.json").exists()
                 else 0 for r in runs]
        return min(steps) >= 10 or None

    poll_until(progressed, 120, interval_s=0.5, what="every point past step 10")
    raw = {i: ctx.slurm.job(f"{array}_{i}")["JobId"] for i in range(3)}
    same = [i for i in range(3) if raw[i] == array]
    assert len(same) == 1, raw  # one task carries the array's own id
    signalled, killed = same[0], (same[0] + 1) % 3
    ctx.slurm.run("scancel", "--signal=USR2", f"{array}_{signalled}")
    os.kill(_rank_pid(raw[killed]), signal.SIGKILL)
    _wait_all(ctx, "rq")
    restarts = {}
    for line in ctx.slurm.run("sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", array).splitlines():
        task = line.split("|")[0]
        restarts[task] = restarts.get(task, -1) + 1
    left = 3 - signalled - killed
    assert restarts == {f"{array}_{signalled}": 1, f"{array}_{killed}": 1, f"{array}_{left}": 0}, restarts
    sums = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert len({s["weights_sha256"] for s in sums}) == 1, sums
    assert [s["restarts"] for s in sums][left] == 0
    # The killed rank's node is kept out of that task only.
    node = json.loads(ctx.cli("nodes", "list", "--json").stdout)[0]["node"]
    assert node in ctx.slurm.job(f"{array}_{killed}").get("ExcNodeList", "")
    assert node not in ctx.slurm.job(f"{array}_{signalled}").get("ExcNodeList", "")
    assert node not in ctx.slurm.job(f"{array}_{left}").get("ExcNodeList", "")


def test_check_answers_yes_or_one_line_why_not(ctx, tmp_path):
    """A feasible sweep: Slurm's "to start at". One that a stale profile plans (it claims 6
    nodes, the cluster has 4) but Slurm refuses: one line saying why, exit 2. Nothing submitted."""
    args = ["--name", "chk", "--root", tmp_path / "chk", "--grid", "trainer.seed=1,2", "--check"]
    ok = ctx.cli("sweep", "gpt-tiny", "-p", "devcluster", *args).stdout
    assert ok.count("to start at") == 1, ok
    stale = yaml.safe_load((REPO / "hpcorch/profiles/devcluster.yaml").read_text())
    for partition in stale["partitions"]:
        partition["node_groups"][1]["nodes"] = "node[3-6]"
    profile = tmp_path / "stale.yaml"
    profile.write_text(yaml.safe_dump(stale))
    no = ctx.cli("sweep", "gpt-tiny", "-p", profile, *args, "--set", "resources.nodes=5",
                 "--set", "trainer.global_batch=80", expect=2).stderr.strip().splitlines()
    assert len(no) == 1 and no[0].startswith("error: sbatch --test-only rejected the script: "), no
    assert "Requested node configuration is not available" in no[0], no
    assert not (tmp_path / "chk").exists()
    assert ctx.slurm.run("squeue", "-h", "-o", "%j").split().count("chk") == 0
