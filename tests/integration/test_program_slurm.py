"""``program:`` jobs on the real dev cluster: the user's own plain DDP script (torchrun's variables
only, its own checkpoints) on 2 nodes x 2 processes with gloo; preempted, it is requeued and
resumes from its own checkpoint to the same final weights as an uninterrupted run; a program that
fails at start-up every time stops as a crash loop; one that cannot start is one line, no requeue;
a node's program ranks SIGKILLed: requeued without that node (quarantined) to the same weights;
``launcher: torchrun`` (one torchrun per node) trains the same weights."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from test_submit import _finish, ctx  # noqa: F401 (fixture)
from trainhelp import REPO

from hpcorch.util.poll import poll_until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

STEPS = ["--steps", "60", "--ckpt-every", "10"]
JOB = "examples/ddp_plain.yaml"
# pre-flight checks are tested elsewhere: here they would only add seconds to every attempt
FAST = ["--set", "resources.time=5", "--set", "health.preflight=false"]


def _args(*extra) -> list[str]:
    words = ", ".join(json.dumps(w) for w in ["python", "ddp_plain.py", *STEPS, *extra, "--ckpt-dir",
                                              "$HPCORCH_CHECKPOINT_DIR"])
    return ["--set", f"program.command=[{words}]", *FAST]


def _final(run) -> str:
    return (run / "checkpoints" / "final.sha256").read_text().strip()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same script and world size under ``hpcorch train`` (4 local processes), never stopped."""
    run = tmp_path_factory.mktemp("reference")
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "train", JOB, "--nproc", "4", "--run-dir",
                          str(run), *_args()], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    return _final(run)


def test_plain_script_completes_then_resumes_exactly_after_preemption(ctx, tmp_path, uninterrupted):
    run = tmp_path / "run"
    ctx.cli("submit", JOB, "-p", "devcluster", "--run-dir", run, *_args("--step-sleep", "0.1"))
    job = ctx.entry(run)
    # preempted at a step between checkpoints: the script does not catch USR2 and is killed
    poll_until(lambda: (run / "checkpoints" / "latest.pt").exists() or None, 90, interval_s=0.2)
    time.sleep(1.3)
    ctx.slurm.run("scancel", "--signal=USR2", job["job_id"])
    _finish(ctx, job["job_id"], timeout_s=150)
    assert _final(run) == uninterrupted
    budget = json.loads((run / "restarts.json").read_text())
    assert (budget["preemption"], budget["node_failure"]) == (1, 0), budget
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "process_start"]
    assert [(s["attempt"], s["cause"]) for s in starts] == [(0, "none"), (1, "preemption")]
    log = (run / "submitit" / job["job_id"] / f"{job['job_id']}_0_log.out").read_text()
    assert "world 4, resuming at step" in log, log[-2000:]
    status = json.loads(ctx.cli("status", job["job_id"], "--json").stdout)
    assert status["state"] == "COMPLETED", status


def test_runtime_helper_stops_at_its_step_and_reports_to_status(ctx, tmp_path, uninterrupted):
    """examples/ddp_runtime.py: it catches the signal, checkpoints where it is (nothing recomputed),
    exits 3; status shows its steps and checkpoint; the weights are the uninterrupted run's."""
    from slurmhelp import wait_progress

    run = tmp_path / "rt"
    ctx.cli("submit", "examples/ddp_runtime.yaml", "-p", "devcluster", "--run-dir", run, *FAST,
            "--set", f"program.args=[{', '.join(json.dumps(w) for w in [*STEPS, '--step-sleep', '0.1'])}]",
            "--set", "program.steps=60")
    job = ctx.entry(run)
    wait_progress(run, 12, timeout_s=90)
    ctx.slurm.run("scancel", "--signal=USR2", job["job_id"])
    _finish(ctx, job["job_id"], timeout_s=150)
    assert _final(run) == uninterrupted
    progress = json.loads((run / "progress.json").read_text())
    assert (progress["step"], progress["restarts"], progress["steps_recomputed"]) == (60, 1, 0), progress
    status = json.loads(ctx.cli("status", job["job_id"], "--json").stdout)
    assert (status["state"], status["step"], status["steps"], status["latest_checkpoint"]) == \
        ("COMPLETED", 60, 60, 60), status
    goodput = status["goodput"]
    assert status["requeues"]["preemption"] == 1 and goodput["attempts"] == 2, status
    assert goodput["buckets_s"]["productive"] > 0 and goodput["steps_recomputed"] == 0, goodput


def test_crash_loop_stops_and_cannot_start_is_one_line(ctx, tmp_path):
    run = tmp_path / "loop"
    ctx.cli("submit", JOB, "-p", "devcluster", "--run-dir", run, "--set", "requeue.crash_loop=2", *FAST,
            "--set", 'program.command=[python, -c, "import sys; print(\'boom\', file=sys.stderr); sys.exit(1)"]')
    loop = ctx.entry(run)
    # a program that cannot start on the allocation (executable at plan time, not at run time)
    script = tmp_path / "code" / "train.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    other = tmp_path / "broken"
    ctx.cli("submit", JOB, "-p", "devcluster", "--run-dir", other, *FAST, "--set", f"program.code_dir={script.parent}",
            "--set", "program.command=[./train.sh]")
    script.chmod(0o644)
    broken = ctx.entry(other)
    for job_id in (loop["job_id"], broken["job_id"]):
        _wait_ended(ctx, job_id)
    note = json.loads(ctx.cli("status", loop["job_id"], "--json").stdout)["note"]
    assert note.startswith("crash loop: the same failure") and "boom" in note, note
    failures = (run / "failures.jsonl").read_text().splitlines()
    assert len(failures) == 2
    status = json.loads(ctx.cli("status", broken["job_id"], "--json").stdout)
    assert "is not executable" in status["note"] and "clear error" in status["note"], status
    assert len((other / "failures.jsonl").read_text().splitlines()) == 1  # never requeued


def _wait_ended(ctx, job_id, timeout_s=150):
    def ended():
        state = ctx.slurm.state(job_id)
        if state == "PENDING" and "BeginTime" in ctx.slurm.job(job_id).get("Reason", ""):
            ctx.slurm.start_now(job_id)
        return state in ("FAILED", "COMPLETED", "CANCELLED") or None

    poll_until(ended, timeout_s, interval_s=0.5, what=f"job {job_id} ended")


def _program_pids(job_id: str, node: str) -> list[int]:
    """The program processes (``python ddp_plain.py``) of ``job_id`` on emulated ``node``."""
    pids = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if (env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node
                    and "ddp_plain.py" in " ".join(proc.cmdline())):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def test_killed_program_requeues_without_its_node_and_resumes_exactly(ctx, tmp_path, uninterrupted):
    """The plain script's two ranks on the job's last node SIGKILLed (an OOM kill): a node
    failure, requeued within requeue.max_node_failures without that node, which is quarantined;
    the requeued run resumes from the script's own checkpoint to the uninterrupted weights."""
    from hpcorch.spec.units import expand_hostlist

    run = tmp_path / "run"
    ctx.cli("submit", JOB, "-p", "devcluster", "--run-dir", run, *_args("--step-sleep", "0.1"))
    job = ctx.entry(run)
    poll_until(lambda: (run / "checkpoints" / "latest.pt").exists() or None, 90, interval_s=0.2)
    victim = expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])[-1]
    pids = _program_pids(job["job_id"], victim)
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    _finish(ctx, job["job_id"], timeout_s=150)
    assert victim not in expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])
    assert _final(run) == uninterrupted
    budget = json.loads((run / "restarts.json").read_text())
    assert (budget["node_failure"], budget["preemption"]) == (1, 0), budget
    failures = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert [(f["nodes"], f["evidence"]) for f in failures] == [([victim], "hard")], failures
    listed = json.loads(ctx.cli("nodes", "list", "--json").stdout)
    assert [q["node"] for q in listed] == [victim] and listed[0]["job_id"] == job["job_id"]


def test_torchrun_launcher_trains_the_same_weights(ctx, tmp_path, uninterrupted):
    """launcher: torchrun: one task per node runs torchrun, which starts the node's 2 ranks."""
    run = tmp_path / "tr"
    ctx.cli("submit", JOB, "-p", "devcluster", "--run-dir", run, *_args(), "--set", "program.launcher=torchrun")
    job = ctx.entry(run)
    _finish(ctx, job["job_id"], timeout_s=150)
    assert _final(run) == uninterrupted
    log = (run / "submitit" / job["job_id"] / f"{job['job_id']}_0_log.out").read_text()
    assert "world 4, starting" in log, log[-2000:]
    assert json.loads(ctx.cli("status", job["job_id"], "--json").stdout)["state"] == "COMPLETED"
