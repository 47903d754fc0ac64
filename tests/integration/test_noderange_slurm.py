"""A node range on the real dev cluster: an allocation of a count the trainer cannot use runs
on the largest valid count below it and hands the other node back to Slurm.

``resources.nodes: 2-4`` with one rank per node and ``global_batch: 16`` (one sequence per
micro-batch) runs on 2 or 4 nodes, not 3. The dev cluster's topology gives a range its minimum
when that fits one leaf switch, so the test makes Slurm hand the job 3 nodes as an operator
would: node4 is held by another job, and the pending job's range is raised to 3-4 before
node[1-3] come free."""
import json
import time

import pytest
from slurmhelp import script
from test_submit import _finish, _stderr_tail, ctx  # noqa: F401 (fixture)

from hpcorch.spec.units import expand_hostlist
from hpcorch.util.poll import poll_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

RANGE = ["resources.nodes=2-4", "resources.tasks_per_node=1", "trainer.global_batch=16", "trainer.micro_batch=1",
         "trainer.steps=12", "trainer.checkpoint.interval=6"]


def _hold(ctx, nodes: str, count: int) -> str:
    """A job that keeps ``nodes`` whole (a node's CPUs are shared otherwise) until cancelled
    (cancelled at teardown too)."""
    return ctx.jobs.submit(script("sleep 600"), f"--nodelist={nodes}", f"--nodes={count}", "--exclusive",
                           "--time=15", "--output=/dev/null")


def test_an_unusable_count_runs_on_the_largest_valid_one_and_hands_the_rest_back(ctx, tmp_path):
    holder4 = _hold(ctx, "node4", 1)
    holder123 = _hold(ctx, "node[1-3]", 3)
    for held in (holder4, holder123):
        ctx.slurm.wait_for(held, "RUNNING", timeout_s=60)
    run = tmp_path / "run"
    dry = ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--dry-run", "--run-dir", run,
                  *[a for s in RANGE for a in ("--set", s)])
    assert "#SBATCH --nodes=2-4" in dry.stdout and "cannot run on 3 nodes" in dry.stderr
    job = ctx.submit(run, *RANGE)
    job_id = job["job_id"]
    assert ctx.slurm.state(job_id) == "PENDING"
    ctx.slurm.update_job(job_id, NumNodes="3-4")  # Slurm is to give it 3: all that comes free
    ctx.slurm.cancel(holder123)
    started = time.monotonic()

    def shrunk():
        info = ctx.slurm.job(job_id)
        return info if info.get("JobState") == "RUNNING" and info.get("NumNodes") == "2" else None

    info = poll_until(shrunk, 60, interval_s=0.5, what=f"job {job_id} running on 2 nodes")
    assert time.monotonic() - started < 60
    kept = expand_hostlist(info["NodeList"])
    assert len(kept) == 2 and "node4" not in kept
    # The node handed back is free for other work (the controller holds the job on two).
    released = ({"node1", "node2", "node3"} - set(kept)).pop()
    poll_until(lambda: ctx.slurm.node_state(released).startswith("idle") or None, 30, interval_s=0.5,
               what=f"{released} idle again")
    _finish(ctx, job_id)
    err = _stderr_tail(ctx, job_id, 200)
    assert "the allocation holds 3 nodes, the trainer runs on 2; handing the others back" in err, err
    rows = ctx.slurm.attempts([job_id])[job_id]
    assert rows and rows[-1]["NodeList"] == info["NodeList"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_step"] == 12
    manifest = json.loads((run / "manifests" / "attempt-0.json").read_text())
    assert (manifest["world_size"], manifest["node_count"]) == (2, 2)
    assert expand_hostlist(manifest["nodes"]) == kept
    status = json.loads(ctx.cli("status", str(run), "--json").stdout)
    assert status["world"] == f"2 ranks on {manifest['nodes']}"
    assert status["goodput"]["world_sizes"][-1] == 2
    # The trainer split the global batch over 2 data-parallel ranks: accumulation 8.
    log = (run / "submitit").rglob("*_0_log.*")
    text = "\n".join(p.read_text(errors="replace") for p in log)
    assert "world 2" in text and "accumulation 8" in text, text[-2000:]


def test_after_a_shrink_a_requeue_is_allowed_the_whole_range_again(ctx, tmp_path, monkeypatch):  # noqa: F811
    """Slurm (22.05) shrinks the allocation, not the job's request: after ``scontrol update
    NumNodes=2`` the job keeps its 2-4 (``scontrol show job`` of the requeued, pending job says
    NumNodes=2: the last allocation's count, not its request). A preemption's requeue after a
    shrink starts on all 4 nodes once they are free, with no update of ours."""
    monkeypatch.setenv("HPCORCH_STEP_DELAY_S", "0.2")  # still training when the signal comes
    holder4 = _hold(ctx, "node4", 1)
    ctx.slurm.wait_for(holder4, "RUNNING", timeout_s=60)
    run = tmp_path / "run"
    job_id = ctx.submit(run, *RANGE, "trainer.steps=60", "placement.switches=off")["job_id"]

    def running_on(count: int, restarts: int):
        def check():
            info = ctx.slurm.job(job_id)
            return info if (info.get("JobState"), info.get("NumNodes")) == ("RUNNING", str(count)) \
                and int(info.get("Restarts", "0")) >= restarts else None
        return check

    poll_until(running_on(2, 0), 90, interval_s=0.5, what=f"job {job_id} shrunk from 3 nodes to 2")
    ctx.slurm.cancel(holder4)
    from slurmhelp import wait_progress

    wait_progress(run, 8, timeout_s=120)  # step 6's checkpoint is committed
    ctx.slurm.run("scancel", "--signal=USR2", job_id)  # to the ranks, as a preemption sends it
    info = poll_until(running_on(4, 1), 120, interval_s=0.5, what=f"job {job_id} requeued onto 4 nodes")
    assert expand_hostlist(info["NodeList"]) == ["node1", "node2", "node3", "node4"]
    _finish(ctx, job_id)
    err = _stderr_tail(ctx, job_id, 400)
    assert "the allocation holds 3 nodes, the trainer runs on 2; handing the others back" in err, err
    manifests = [json.loads((run / "manifests" / f"attempt-{i}.json").read_text()) for i in (0, 1)]
    assert [(m["world_size"], m["node_count"]) for m in manifests] == [(2, 2), (4, 4)], manifests
    assert json.loads((run / "summary.json").read_text())["final_step"] == 60
