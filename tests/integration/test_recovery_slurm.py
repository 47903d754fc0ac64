"""Hard node failures and crash loops on the real dev cluster: a node's ranks are SIGKILLed
(the node left up, or set DOWN two seconds later), the job is requeued without that node and
resumes to the same weights; the node is quarantined for the next submission; a failure that
repeats at the same step stops the job with a message instead of spending the budget."""
import json
import os
import signal
import time

import psutil
import pytest
from slurmhelp import wait_progress
from test_submit import _finish, _summary, ctx, reference  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(480)]


def _rank_pids(job_id: str, node: str) -> list[int]:
    """The training ranks of ``job_id`` running on emulated ``node`` (every emulated node is
    this machine: a rank is told apart by the environment Slurm gave it)."""
    pids = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if (env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node
                    and "submitit.core._submit" in " ".join(proc.cmdline())):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def _kill_ranks_on(ctx, job_id: str, run) -> str:
    """SIGKILL the ranks of the job's last node (a GPU fault or an OOM kill there); returns it."""
    from hpcorch.spec.units import expand_hostlist

    victim = expand_hostlist(ctx.slurm.job(job_id)["NodeList"])[-1]
    pids = _rank_pids(job_id, victim)
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return victim


def _attempt_nodes(ctx, job_id: str) -> str:
    return ctx.slurm.job(job_id)["NodeList"]


@pytest.mark.parametrize("then_down", [False, True], ids=["node-left-up", "node-down-2s-later"])
def test_killed_ranks_requeue_without_their_node_and_resume_exactly(ctx, tmp_path, reference, monkeypatch, then_down):
    from hpcorch.spec.units import expand_hostlist

    monkeypatch.setenv("HPCORCH_STEP_DELAY_S", "0.05")
    run = tmp_path / "run"
    job = ctx.submit(run)
    wait_progress(run, 35)
    victim = _kill_ranks_on(ctx, job["job_id"], run)
    if then_down:
        time.sleep(2)
        ctx.slurm.set_node(victim, "DOWN", reason="test-hard-failure")
    _finish(ctx, job["job_id"], timeout_s=300)
    assert victim not in expand_hostlist(_attempt_nodes(ctx, job["job_id"]))
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"]
    assert got["restarts"] == 1
    budget = json.loads((run / "restarts.json").read_text())
    assert budget["node_failure"] == 1, budget  # counted once, whoever requeued first
    failures = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert [f["nodes"] for f in failures] == [[victim]] and failures[0]["evidence"] == "hard"
    if not then_down:  # status says which ranks died, how, and the likely cause, as `hpcorch train` does
        said = ctx.entry(run)["failure"]
        assert f"on {victim}: Killed by SIGKILL (the kernel's OOM killer, or a kill -9)" in said, said
    # The node is quarantined: the next submission's dry run leaves it out, until cleared.
    listed = json.loads(ctx.cli("nodes", "list", "--json").stdout)
    assert [q["node"] for q in listed] == [victim] and listed[0]["job_id"] == job["job_id"]
    dry = ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", tmp_path / "next",
                  "--set", "resources.nodes=2", "--set", "trainer.global_batch=32", "--dry-run").stdout
    assert f"#SBATCH --exclude={victim}\n" in dry
    ctx.cli("nodes", "clear", victim)
    assert "--exclude" not in ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir",
                                      tmp_path / "next", "--set", "resources.nodes=2", "--set",
                                      "trainer.global_batch=32", "--dry-run").stdout


def test_the_same_crash_at_the_same_step_stops_the_job_with_its_story(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("HPCORCH_CRASH_AT_STEP", "30:0")
    run = tmp_path / "run"
    job = ctx.submit(run)
    state = ctx.slurm.wait_for(job["job_id"], {"FAILED", "COMPLETED", "CANCELLED"}, timeout_s=360, poll_s=1)
    assert state == "FAILED"
    failures = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 3 and len({f["signature"] for f in failures}) == 1
    budget = json.loads((run / "restarts.json").read_text())
    assert budget["node_failure"] == 2  # two requeues, then the loop was recognised
    note = budget["refused"]
    assert note.startswith("crash loop: the same failure at step 30 3 times in a row"), note
    assert "injected failure after step 30 on rank 0" in note and "node" in note
    status = json.loads(ctx.cli("status", str(run), "--json").stdout)
    assert status["note"] == note
    err = (run / "logs" / f"{job['job_id']}.err").read_text()
    assert "hpcorch: not requeued: crash loop" in err
