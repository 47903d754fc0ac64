"""Stops on the real dev cluster that must cost seconds: after a SIGTERM stop (a cancel, a node
set DOWN while its slurmd lives) every rank leaves once the checkpoint is committed, so the
nodes are free well within Slurm's KillWait (30 s); a preemption in a job's first seconds (in
the pre-flight, before the ranks have handlers, while they start) is a preemption, requeued
without Slurm's ~120 s hold, with one restart count everywhere, even with no node-failure
budget. Nothing here lifts a hold for the job."""
import json
import time
from datetime import datetime

import pytest
from slurmhelp import script, wait_for_file, wait_progress
from test_submit import _summary, ctx  # noqa: F401 (fixture)

from hpcorch.spec.units import expand_hostlist
from hpcorch.state.rundir import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

KILL_WAIT_S = 30  # the dev cluster's KillWait


def _events(run, name: str, count: int = 1) -> list[dict]:
    """The run's events called ``name``, once there are ``count`` of them."""
    from hpcorch.util.fileio import json_lines
    from hpcorch.util.poll import poll_until

    def found():
        events = [e for e in json_lines(run / "events.jsonl") if e.get("event") == name]
        return events if len(events) >= count else None

    return poll_until(found, 30, interval_s=0.2, what=f"{count} {name} event(s) in {run}")


def _step_end(ctx, job_id: str, step: str) -> float:
    """When accounting says the job's first run's step ``step`` (0: pre-flight, 1: training) ended."""
    from hpcorch.util.poll import poll_until

    def ended():
        out = ctx.slurm.run("sacct", "-D", "-n", "-P", "-o", "JobID,End", "-j", job_id)
        ends = [e for j, e in (line.split("|") for line in out.splitlines()) if j == f"{job_id}.{step}"]
        return datetime.fromisoformat(ends[0]).timestamp() if ends and ends[0] not in ("", "Unknown") else None

    return poll_until(ended, 60, interval_s=0.5, what=f"step {job_id}.{step} ended in accounting")


@pytest.mark.parametrize("how", ["cancel", "node-down"])
def test_a_sigterm_stop_frees_the_nodes_within_seconds_of_the_commit(ctx, tmp_path, how):
    run = tmp_path / "run"
    job = ctx.submit(run, "environment.HPCORCH_STEP_DELAY_S=0.05")
    job_id = job["job_id"]
    wait_progress(run, 30)
    victim = expand_hostlist(ctx.slurm.job(job_id)["NodeList"])[0]  # the batch host: no recovery step runs
    signalled = time.time()
    if how == "cancel":
        ctx.cli("cancel", job["key"])
    else:
        ctx.slurm.set_node(victim, "DOWN", reason="test-graceful-node-failure")
    end = _step_end(ctx, job_id, "1")
    committed = _events(run, "checkpoint_committed")[0]["time"]
    # sacct's times are whole seconds: the step ended within a few seconds, not after KillWait.
    assert end - signalled < 10 < KILL_WAIT_S, (end - signalled, committed - signalled)
    out = wait_for_file(RunDir(run).rank_log(job_id, 0, "out"), lambda text: "after SIGTERM: " in text)
    log = out + RunDir(run).rank_log(job_id, 0, "err").read_text()
    if how == "cancel":
        assert "error: cancelled; checkpoint committed at step" in log
        assert ctx.slurm.wait_for(job_id, "CANCELLED", timeout_s=60) == "CANCELLED"
        again = ctx.cli("cancel", job["key"]).stdout
        assert "nothing to cancel" in again and "cancel sent" not in again, again
        return
    assert f"node {victim} failed (Slurm reports it down); Slurm requeues the job" in log, log[-2000:]
    assert "cancelled" not in log
    # The next attempt starts within seconds: Slurm's requeue hold is cut by the attempt it ended.
    assert ctx.slurm.wait_for(job_id, "COMPLETED", timeout_s=200, poll_s=1) == "COMPLETED"
    gap = _events(run, "first_step", 2)[1]["time"] - committed
    assert gap < 60, gap  # the hold alone is ~120 s
    assert json.loads((run / "restarts.json").read_text())["node_failure"] == 1
    assert _summary(run)["restarts"] == 1


@pytest.mark.parametrize("after_s,preflight", [(0.5, True), (2.0, False), (5.0, False)],
                         ids=["0.5s-preflight", "2s-ranks-starting", "5s-ranks-starting"])
def test_a_preemption_in_the_first_seconds_is_a_preemption(ctx, tmp_path, after_s, preflight):
    run = tmp_path / "run"
    # Enough steps that the job still runs well after 5 s: forked ranks reach their first step ~3 s
    # after the start, and 200 steps then took 3 s on the dev cluster.
    job = ctx.submit(run, "requeue.max_node_failures=0", "trainer.steps=1000",
                     f"health.preflight={str(preflight).lower()}")
    job_id = job["job_id"]
    ctx.slurm.wait_for(job_id, "RUNNING", timeout_s=60, poll_s=0.05)
    time.sleep(after_s)
    urgent = ctx.jobs.submit(script("sleep 1", "--partition=urgent", "--nodes=4", "--exclusive", "--time=2",
                                    f"--output={tmp_path}/urgent.out"))
    assert ctx.slurm.wait_for(urgent, "COMPLETED", timeout_s=120) == "COMPLETED"
    assert ctx.slurm.wait_for(job_id, {"COMPLETED", "FAILED"}, timeout_s=150, poll_s=1) == "COMPLETED"
    budget = json.loads((run / "restarts.json").read_text())
    assert budget["node_failure"] == 0 and budget["preemption"] >= 1, budget
    runs = ctx.slurm.attempts([job_id])[job_id]
    restarts = len(runs) - 1
    assert budget["preemption"] == restarts
    assert _summary(run)["restarts"] == restarts
    assert ctx.entry(job_id)["restarts"] == restarts  # `hpcorch status`
    # No ~120 s hold: each requeued run started soon after the one before ended (the urgent job
    # ran for a second in between).
    for before, after in zip(runs, runs[1:], strict=False):
        wait = datetime.fromisoformat(after["Start"]).timestamp() - datetime.fromisoformat(before["End"]).timestamp()
        assert wait < 60, (wait, runs)
