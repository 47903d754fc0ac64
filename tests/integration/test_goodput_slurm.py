"""Goodput on the real dev cluster: a job with (emulated) GPUs preempted twice and hit by one
node failure. Its buckets sum to the allocated time, its GPU-hours are sacct's (ElapsedRaw x
gres/gpu over every run of the job), its recomputed steps are what the trainer recorded, and
the requeues hpcorch asked for were not held for Slurm's ~120 s."""
import json
import time

import pytest
from slurmhelp import wait_progress
from test_recovery_slurm import _kill_ranks_on
from test_submit import ctx  # noqa: F401 (fixture)

from hpcorch.util.poll import poll_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]


def _events(run, name):
    try:
        lines = (run / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _restarted(ctx, run, job_id, starts, step, timeout_s=150):
    """Wait for the job's ``starts``-th process start, then for ``step``."""
    poll_until(lambda: len(_events(run, "process_start")) >= starts or None, timeout_s, interval_s=0.5,
               what=f"process start {starts} of job {job_id}")
    wait_progress(run, step, timeout_s=timeout_s)


def _preempt(ctx, run, job_id, starts, after_step):
    """USR2 to the ranks (as a preemption sends it), then wait until the next attempt trains."""
    ctx.slurm.run("scancel", "--signal=USR2", job_id)
    _restarted(ctx, run, job_id, starts + 1, after_step)


def _sacct_gpu_hours(rows):
    total = 0.0
    for r in rows:
        tres = dict(item.partition("=")[::2] for item in r["AllocTRES"].split(","))
        total += int(r["ElapsedRaw"]) * int(tres["gres/gpu"]) / 3600
    return total


def test_goodput_of_a_job_preempted_twice_and_hit_by_a_node_failure(ctx, tmp_path):
    run = tmp_path / "run"
    job = ctx.submit(run, "resources.gpus_per_node=2", "trainer.steps=110", "trainer.checkpoint.interval=20",
                     "environment.HPCORCH_STEP_DELAY_S=0.1")
    job_id = job["job_id"]
    wait_progress(run, 15, timeout_s=150)
    _preempt(ctx, run, job_id, 1, 40)
    _preempt(ctx, run, job_id, 2, 65)
    # A hard failure: a node's ranks killed outright (no checkpoint), the node down 2 s later.
    victim = _kill_ranks_on(ctx, job_id, run)
    time.sleep(2)
    ctx.slurm.set_node(victim, "DOWN", reason="test-goodput-node-failure")

    def done():
        state = ctx.slurm.state(job_id)
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), state
        return state == "COMPLETED" or None

    # No test help with Slurm's hold: hpcorch's own requeues (protocol, recovery) cut it.
    poll_until(done, 240, interval_s=0.5, what=f"job {job_id} COMPLETED")
    # slurmdbd lags the controller: wait until it holds all four runs, the last one ended.
    rows = poll_until(lambda: (lambda r: r if len(r) == 4 and r[-1]["State"] == "COMPLETED" else None)(
        ctx.slurm.attempts([job_id])[job_id]), 60, interval_s=1, what="four runs in accounting")

    info = json.loads(ctx.cli("status", str(run), "--json").stdout)
    g = info["goodput"]
    assert g["source"] == "sacct" and g["unit"] == "GPU" and g["attempts"] == 4
    allocated_s = sum(int(r["ElapsedRaw"]) for r in rows)
    assert sum(g["buckets_s"].values()) == pytest.approx(allocated_s, rel=0.01)
    assert g["buckets_s"]["other"] >= -0.01 * allocated_s  # the named buckets do not overlap
    assert g["allocated_hours"] == pytest.approx(_sacct_gpu_hours(rows), rel=0.01)
    assert _sacct_gpu_hours(rows) > 0 and all("gres/gpu=4" in r["AllocTRES"] for r in rows)
    # The trainer's own count (process_start events, summary.json) is the accounting's.
    starts = _events(run, "process_start")
    summary = json.loads((run / "summary.json").read_text())
    assert g["steps_recomputed"] == starts[-1]["steps_recomputed"] == summary["steps_recomputed"]
    assert [e["steps_recomputed"] for e in starts[:3]] == [0, 0, 0]  # preemptions checkpoint where they stop
    assert 0 < g["steps_recomputed"] <= 20  # the node failure lost the steps since the last checkpoint
    assert g["buckets_s"]["recomputed"] > 0
    assert 0 < g["goodput"] < 1 and g["buckets_s"]["productive"] > 0 and g["buckets_s"]["startup"] > 0
    assert g["buckets_s"]["checkpoint"] > 0 and g["buckets_s"]["idle_after_signal"] >= 0
    # The three requeues hpcorch asked for started again without Slurm's ~120 s BeginTime hold.
    from hpcorch.observe.goodput import sacct_attempts

    attempts = sacct_attempts(rows)
    assert all(a.queue_wait_s < 60 for a in attempts[1:]), [a.queue_wait_s for a in attempts]
    assert g["queue_wait_s"] == pytest.approx(sum(a.queue_wait_s for a in attempts))
    rows_ls = [r for r in json.loads(ctx.cli("ls", "--json").stdout) if r["job_id"] == job_id]
    assert rows_ls[0]["goodput"] == pytest.approx(g["goodput"], rel=1e-6)
