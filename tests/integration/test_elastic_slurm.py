"""The cluster shrinks under a job on the real dev cluster: a ``resources.nodes: 2-4`` job
whose node is killed hard goes on at once on the 3 nodes left (the same run: every sample once,
the losses of an uninterrupted run), and a job whose attempts commit nothing stops with its
verdict instead of requeueing until its budget is spent."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from slurmhelp import wait_progress
from test_recovery_slurm import _rank_pids
from test_submit import ctx  # noqa: F401 (fixture)
from trainhelp import REPO, TINY, losses, traced_samples

from hpcorch.util.poll import poll_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(540)]

STEPS, INTERVAL = 40, 10
# 12 samples a step: 4, 3 and 2 ranks each hold a whole share (accumulation 3, 4 or 6).
ELASTIC = ["trainer.global_batch=12", "trainer.micro_batch=1", f"trainer.steps={STEPS}",
           f"trainer.checkpoint.interval={INTERVAL}", "trainer.checkpoint.keep=2", "resources.tasks_per_node=1"]


def _sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *ELASTIC, *extra] for a in ("--set", s)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same job on 4 ranks, locally, never interrupted, its samples traced."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run, trace = root / "run", root / "trace"
    cmd = [sys.executable, "-m", "hpcorch.cli.main", "train", "jobs/gpt-tiny.yaml", "--nproc", "4",
           "--run-dir", str(run), *_sets("resources.nodes=1", "resources.tasks_per_node=4")]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HPCORCH_SAMPLE_TRACE": str(trace)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run, trace


def _first_steps(run) -> list[dict]:
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("event") == "first_step"]


def test_a_node_range_job_goes_on_at_once_on_the_nodes_left_after_a_hard_node_failure(
        ctx, tmp_path, uninterrupted, monkeypatch):  # noqa: F811
    from hpcorch.spec.units import expand_hostlist

    ref_run, ref_trace = uninterrupted
    run, trace = tmp_path / "run", tmp_path / "trace"
    monkeypatch.setenv("HPCORCH_STEP_DELAY_S", "0.3")  # the failure lands mid-run however fast the machine
    monkeypatch.setenv("HPCORCH_SAMPLE_TRACE", str(trace))
    # A range starts on what is free: all 4 nodes must be (an earlier test's job may still complete).
    states = {}

    def all_idle():
        states.update({f"node{i}": ctx.slurm.node_state(f"node{i}") for i in range(1, 5)})
        return all(s == "idle" for s in states.values()) or None

    try:
        poll_until(all_idle, 120, interval_s=1)
    except TimeoutError:  # a job outside this test holds some: the range starts on the rest
        print(f"\nnot all 4 nodes idle before the submission: {states}; "
              f"queue: {ctx.slurm.run('squeue', '-a', '-h', '-o', '%i %T %N')!r}")
    ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", run,
            *_sets("resources.nodes=2-4", "placement.switches=off"))
    job = ctx.entry(run)
    job_id = job["job_id"]
    wait_progress(run, INTERVAL + 3, timeout_s=180)
    nodes = expand_hostlist(ctx.slurm.job(job_id)["NodeList"])
    assert len(nodes) >= 3, nodes  # 4 on an idle cluster
    victim = nodes[-1]
    pids = _rank_pids(job_id, victim)
    assert len(pids) == 1, pids
    failed_at = time.time()
    os.kill(pids[0], signal.SIGKILL)  # the node dies: its rank at once, then Slurm's view of it
    # Two seconds later, as test_recovery_slurm does: a node Slurm downs at once cancels the job
    # itself (NODE_FAIL) before the batch host's recovery runs, and then nothing of hpcorch lifts
    # the requeued job's ~120 s BeginTime hold (measured: see the report of issue 28).
    time.sleep(2)
    ctx.slurm.set_node(victim, "DOWN", reason="test-elastic-shrink")
    state = ctx.slurm.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=300, poll_s=1)
    assert state == "COMPLETED", (run / "logs" / f"{job_id}.err").read_text()[-3000:]

    # The second attempt ran on the nodes left (3 of 4 on an idle cluster), without the failed one, at once.
    after = expand_hostlist(ctx.slurm.job(job_id)["NodeList"])
    print(f"\nnodes {','.join(nodes)} -> {','.join(after)} after {victim} failed")
    assert 2 <= len(after) < len(nodes) and victim not in after, after
    starts = _first_steps(run)
    assert len(starts) == 2, starts
    gap = starts[1]["time"] - failed_at
    print(f"failure -> first step on {len(after)} nodes: {gap:.1f} s (resumed at step {starts[1]['step']})")
    (tmp_path / "gap_s").write_text(f"{gap:.2f}\n")
    # Reported, not held to 30 s: when Slurm downs the node before srun returns, Slurm requeues
    # the job itself and its ~120 s BeginTime hold stays (measured 148-161 s; 30 s otherwise).
    assert gap < 240, gap
    summary = json.loads((run / "summary.json").read_text())
    assert summary["restarts"] == 1 and summary["world_size"] == len(after), summary
    budget = json.loads((run / "restarts.json").read_text())
    assert budget["node_failure"] == 1 and not budget["refused"], budget

    # The same run: every sample once, in the uninterrupted run's order; the same losses.
    got, want = traced_samples(trace), traced_samples(ref_trace)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want
    ids = [i for step in got.values() for i in step]
    assert len(ids) == len(set(ids)) == 12 * STEPS
    resumed = starts[1]["step"] - 1
    shrunk = [s for s in range(resumed + 1, STEPS + 1)]
    assert len(shrunk) >= 10, resumed
    mine, theirs = losses(run), losses(ref_run)
    worst = max(abs(mine[s] - theirs[s]) / abs(theirs[s]) for s in shrunk)
    print(f"worst relative loss difference over steps {shrunk[0]}-{shrunk[-1]} on {len(after)} nodes: {worst:.2e}")
    assert worst <= 1e-4, worst


def test_attempts_that_commit_nothing_stop_the_job_with_their_verdict(ctx, tmp_path, monkeypatch):  # noqa: F811
    # Rank 0 fails after step 4 on every attempt, before the first checkpoint (step 10).
    monkeypatch.setenv("HPCORCH_CRASH_AT_STEP", "4:0")
    run = tmp_path / "run"
    ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", run,
            *_sets("resources.nodes=1", "resources.tasks_per_node=2", "trainer.global_batch=8",
                   "trainer.micro_batch=2", "requeue.crash_loop=0", "requeue.no_progress_attempts=2",
                   "requeue.max_node_failures=10"))
    job_id = ctx.entry(run)["job_id"]
    state = ctx.slurm.wait_for(job_id, {"FAILED", "COMPLETED", "CANCELLED"}, timeout_s=360, poll_s=1)
    assert state == "FAILED"
    failures = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 3, failures
    budget = json.loads((run / "restarts.json").read_text())
    assert budget["node_failure"] == 2 and budget["checkpoints"] == [None, None], budget
    verdict = budget["refused"]
    assert verdict.startswith("no progress: 2 attempts in a row committed no new checkpoint "
                              "(no checkpoint committed yet)"), verdict
    assert json.loads(ctx.cli("status", str(run), "--json").stdout)["note"] == verdict
    assert f"hpcorch: not requeued: {verdict}" in (run / "logs" / f"{job_id}.err").read_text()
