"""Slurm's own requeues on the real dev cluster are not held for its ~120 s ``BeginTime``: a hard
failure of the batch host (its slurmd, step daemons and ranks SIGKILLed, as at a power loss: no
recovery step of ours runs there), seen by the ranks left or, where nothing inside the job
outlives it, by ``hpcorch status``; a node set DOWN under a ``program:`` job; a preemption whose
requeue signal came before any step started (lost by Slurm). The requeued job starts again
within seconds and counts one restart everywhere. The test itself never lifts a hold."""
import json
import os
import signal
import time
from datetime import datetime

import psutil
import pytest
from slurmhelp import wait_progress
from test_submit import _sets, _summary, ctx  # noqa: F401 (fixture)

from hpcorch.util.poll import poll_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

HOLD_S = 120     # Slurm's hold on a requeued job (credential lifetime + 1 s)
WELL_UNDER = 45  # what a lifted hold must beat: the helper polls, waits 2 s, and the scheduler starts it


def _hard_fail(devcluster, job_id: str, node: str) -> list[int]:
    """Emulated ``node`` dies at once: its slurmd, its step daemons and every process of the job
    there are SIGKILLed (every emulated node is this machine: a process is told apart by the
    environment Slurm gave it). Returns the pids killed."""
    slurmd = next(d for d in devcluster.daemons() if d.name == f"slurmd {node}").pid()
    assert slurmd, f"slurmd of {node} is not running"
    victims = {slurmd}
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node:
                victims.add(proc.pid)
                parent = proc.parent()
                if parent is not None and parent.name().startswith("slurmstepd"):
                    victims.add(parent.pid)
        except psutil.Error:
            continue
    # All stopped first, the daemons before the rest: a step daemon that saw its task die would
    # still report it to the controller (and the job would end FAILED, not NODE_FAIL).
    daemons = [pid for pid in victims if pid == slurmd or _is_stepd(pid)]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in daemons + sorted(victims - set(daemons)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    return sorted(victims)


def _revive(ctx, devcluster, node: str) -> None:
    """The failed node back: its slurmd started, and once it answers, the node resumed."""
    devcluster._run_daemon(f"slurmd {node}", ["slurmd", "-N", node])
    poll_until(lambda: not ctx.slurm.node_state(node).endswith("*") or None, 60, interval_s=0.5,
               what=f"slurmd of {node} answering")
    if ctx.slurm.node_state(node).startswith("down"):
        ctx.slurm.set_node(node, "RESUME")


def _is_stepd(pid: int) -> bool:
    try:
        return psutil.Process(pid).name().startswith("slurmstepd")
    except psutil.Error:
        return False


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _runs(ctx, job_id: str, count: int) -> list[dict]:
    """Accounting's runs of the job, once it holds ``count`` of them, the last one ended."""
    def ended():
        rows = ctx.slurm.attempts([job_id])[job_id]
        return rows if len(rows) >= count and rows[-1]["End"] not in ("", "Unknown") else None

    return poll_until(ended, 60, interval_s=1, what=f"{count} runs of {job_id} in accounting")


def _completed_without_help(ctx, job_id: str, timeout_s: float) -> None:
    def done():
        state = ctx.slurm.state(job_id)
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"), state
        return state == "COMPLETED" or None

    poll_until(done, timeout_s, interval_s=1, what=f"job {job_id} COMPLETED")


@pytest.mark.parametrize("observer", ["ranks", "client"])
def test_a_hard_failure_of_the_batch_host_is_not_held(ctx, devcluster, tmp_path, monkeypatch, observer):
    """The batch host dies with its slurmd: the ranks on the other node see their collective
    fail and one of them (once per attempt) leaves the watcher that lifts the hold once Slurm
    has requeued the job (here: the node set DOWN 3 s later, as the controller does after
    SlurmdTimeout). ``client``: where nothing inside the job outlives it (process tracking by
    cgroup; emulated by HPCORCH_REQUEUE_HOLD=keep in the job), ``hpcorch status`` lifts it."""
    from hpcorch.batch.recovery import HOLD_ENV

    run = tmp_path / "run"
    if observer == "client":
        monkeypatch.setenv(HOLD_ENV, "keep")  # sbatch passes it on to the job
    job = ctx.submit(run, "environment.HPCORCH_STEP_DELAY_S=0.05")
    monkeypatch.delenv(HOLD_ENV, raising=False)
    job_id = job["job_id"]
    wait_progress(run, 30)
    victim = ctx.slurm.job(job_id)["BatchHost"]
    try:
        killed_at = time.time()
        _hard_fail(devcluster, job_id, victim)
        time.sleep(3)
        ctx.slurm.set_node(victim, "DOWN", reason="test-hard-failure-of-the-batch-host")
        if observer == "client":  # a user looking now and then, once Slurm has requeued the job
            poll_until(lambda: int(ctx.slurm.job(job_id).get("Restarts", "0")) >= 1 or None, 60, interval_s=0.5,
                       what=f"job {job_id} requeued")

            def looked():
                ctx.cli("status", job_id)
                return ctx.slurm.state(job_id) in ("RUNNING", "COMPLETED") or None

            poll_until(looked, HOLD_S + 60, interval_s=2, what=f"job {job_id} running again")
        _completed_without_help(ctx, job_id, timeout_s=HOLD_S + 150)
    finally:
        _revive(ctx, devcluster, victim)
    first, second = _runs(ctx, job_id, 2)[:2]
    assert first["State"].startswith("NODE_FAIL"), first
    wait = _timestamp(second["Start"]) - _timestamp(first["End"])
    print(f"hard failure of the batch host ({observer}): killed -> requeued "
          f"{_timestamp(first['End']) - killed_at:.0f} s, requeued -> next start {wait:.0f} s")
    assert wait < WELL_UNDER < HOLD_S, (wait, first, second)
    budget = json.loads((run / "restarts.json").read_text())
    assert (budget["node_failure"], budget["preemption"]) == (1, 0), budget
    assert _summary(run)["restarts"] == 1
    assert ctx.entry(job_id)["restarts"] == 1  # `hpcorch status`
    watchers = [p.name for p in (run / "exits" / "attempt-0").glob("hold-watch*")]
    assert watchers == (["hold-watch"] if observer == "ranks" else []), watchers  # one per attempt


def test_a_program_job_slurm_requeues_is_not_held(ctx, tmp_path):
    """A ``program:`` job whose batch host is set DOWN (its slurmd alive): Slurm SIGTERMs every
    task and requeues the job itself; the program's tasks leave the watcher as they go."""
    from test_program_slurm import JOB, _args

    run = tmp_path / "run"
    ctx.cli("submit", JOB, "-p", "devcluster", "--run-dir", run, *_args("--step-sleep", "0.1"))
    job_id = ctx.entry(run)["job_id"]
    poll_until(lambda: (run / "checkpoints" / "latest.pt").exists() or None, 90, interval_s=0.2)
    victim = ctx.slurm.job(job_id)["BatchHost"]
    ctx.slurm.set_node(victim, "DOWN", reason="test-program-node-failure")
    _completed_without_help(ctx, job_id, timeout_s=HOLD_S + 120)
    first, second = _runs(ctx, job_id, 2)[:2]
    wait = _timestamp(second["Start"]) - _timestamp(first["End"])
    print(f"program job, node DOWN: requeued -> next start {wait:.0f} s")
    assert wait < WELL_UNDER < HOLD_S, (wait, first, second)
    budget = json.loads((run / "restarts.json").read_text())
    assert (budget["node_failure"], budget["preemption"]) == (1, 0), budget
    starts = [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
              if e["event"] == "process_start"]
    assert [(s["attempt"], s["cause"]) for s in starts] == [(0, "none"), (1, "node_failure")], starts
    assert _summary(run)["restarts"] == 1
    assert ctx.entry(job_id)["restarts"] == 1  # `hpcorch status`


SLOW_MODULE = """#!/bin/sh
# A site's slow `module load` (a busy shared file system): the first attempt's set-up outlasts
# the preemption's GraceTime (30 s), so no step has started when the requeue signal is due.
[ "${SLURM_RESTART_COUNT:-0}" = 0 ] && exec sleep 90
exit 0
"""


def test_a_preemption_before_any_step_is_not_held(ctx, tmp_path, monkeypatch):
    """The requeue signal is due while the batch script still loads its modules: Slurm signals
    only steps, so it is lost, and after GraceTime Slurm requeues the job itself, SIGTERMing the
    batch shell, whose trap leaves the watcher."""
    import yaml
    from slurmhelp import script

    from hpcorch.spec.catalog import find

    profile = yaml.safe_load(find("profiles", "devcluster").read_text())
    profile["environment"]["modules"] = ["slowsite/1"]
    (tmp_path / "devcluster.yaml").write_text(yaml.safe_dump(profile))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "module").write_text(SLOW_MODULE)
    (tmp_path / "bin" / "module").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")  # sbatch passes it on
    run = tmp_path / "run"
    ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", tmp_path / "devcluster.yaml", "--run-dir", run,
            *_sets(["requeue.max_node_failures=0", "trainer.steps=40"]))
    job_id = ctx.entry(run)["job_id"]
    ctx.slurm.wait_for(job_id, "RUNNING", timeout_s=60)
    time.sleep(2)
    urgent = ctx.jobs.submit(script("sleep 1", "--partition=urgent", "--nodes=4", "--exclusive", "--time=2",
                                    f"--output={tmp_path}/urgent.out"))
    assert ctx.slurm.wait_for(urgent, "COMPLETED", timeout_s=120) == "COMPLETED"
    _completed_without_help(ctx, job_id, timeout_s=HOLD_S + 120)
    first, second = _runs(ctx, job_id, 2)[:2]
    assert first["State"].startswith("PREEMPTED"), first
    wait = _timestamp(second["Start"]) - _timestamp(first["End"])
    print(f"preemption before any step: requeued -> next start {wait:.0f} s")
    assert wait < WELL_UNDER < HOLD_S, (wait, first, second)
    budget = json.loads((run / "restarts.json").read_text())
    assert (budget["preemption"], budget["node_failure"]) == (1, 0), budget
    assert _summary(run)["restarts"] == 1
    assert ctx.entry(job_id)["restarts"] == 1  # `hpcorch status`
