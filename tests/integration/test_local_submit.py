"""The embedded default: `hpcorch submit` with the local profile, through submitit's local executor."""
import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from slurmhelp import wait_progress
from trainhelp import REPO, TINY, summary, train

from hpcorch.util.poll import poll_until

pytestmark = pytest.mark.timeout(600)
LOCAL = ["trainer.steps=100", "trainer.checkpoint.interval=40", "trainer.model.width=128",
         "trainer.model.layers=2", "trainer.model.seq_len=64"]


def _submit(run_dir, home, *extra, wait=True, env=None):
    sets = [a for s in TINY + LOCAL + list(extra) for a in ("--set", s)]
    cmd = [sys.executable, "-m", "hpcorch.cli.main", "submit", "jobs/gpt-tiny.yaml", "--run-dir", str(run_dir), *sets]
    if not wait:
        cmd.append("--no-wait")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HPCORCH_HOME": str(home), **(env or {})})


def test_a_rank_killed_outright_is_named_at_the_end_and_in_status(tmp_path):
    """Rank 1 SIGKILLs itself after step 8 (as the OOM killer would): submit's last line and
    status's ``last failure`` name it and the likely cause; exit 1, no hpcorch traceback."""
    run, home = tmp_path / "run", tmp_path / "home"
    out = _submit(run, home, "trainer.checkpoint.interval=6", env={"HPCORCH_CRASH_AT_STEP": "8:1:kill"})
    said = "rank 1 was killed outright, likely by SIGKILL (the kernel's OOM killer, or a kill -9)"
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {said}"), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    status = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "status", str(run), "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "HPCORCH_HOME": str(home)})
    info = json.loads(status.stdout)
    assert info["state"] == "STOPPED" and info["failure"].startswith(said) and info["latest_checkpoint"] == 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref")
    out = train(run, 2, *LOCAL)
    assert out.returncode == 0, out.stderr
    return summary(run)


def test_local_submit_trains_like_hpcorch_train(tmp_path, reference):
    out = _submit(tmp_path / "run", tmp_path / "home")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hpcorch: done at step 100" in out.stdout
    assert summary(tmp_path / "run")["weights_sha256"] == reference["weights_sha256"]
    assert "COMPLETED" in out.stderr


def test_local_preemption_signal_requeues_and_resumes_exactly(tmp_path, reference):
    run, home = tmp_path / "run", tmp_path / "home"
    out = _submit(run, home, wait=False)
    assert out.returncode == 0, out.stderr
    from hpcorch.state.registry import Registry

    controller = int(Registry(home / "registry.sqlite").all()[-1].job_id)
    wait_progress(run, 5)
    ranks = psutil.Process(controller).children()
    assert len(ranks) == 2
    for rank in ranks:  # what a scheduler does on preemption
        rank.send_signal(signal.SIGUSR2)
    poll_until(lambda: (run / "summary.json").exists() or None, 240, what=f"{run}/summary.json")
    got = summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"]
    assert got["restarts"] == 1 and got["steps_recomputed"] == 0
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert events.count("process_start") == 2 and "checkpoint_committed" in events
    psutil.Process(controller).wait(timeout=60)


def test_local_cancel_stops_for_good_and_resume_continues(tmp_path, reference):
    """Also: checkpoints in the job's own checkpoint.dir are what status reports, and nothing
    else may train into the run directory while the job lives."""
    run, home, ckpts = tmp_path / "run", tmp_path / "home", tmp_path / "elsewhere"
    assert _submit(run, home, f"trainer.checkpoint.dir={ckpts}", wait=False).returncode == 0
    from hpcorch.state.registry import Registry

    controller = int(Registry(home / "registry.sqlite").all()[-1].job_id)
    wait_progress(run, 5)
    env = {**os.environ, "HPCORCH_HOME": str(home)}
    cli = [sys.executable, "-m", "hpcorch.cli.main"]
    second = _submit(run, home, f"trainer.checkpoint.dir={ckpts}", wait=False)
    assert second.returncode == 2 and f"in use by local job {controller}" in second.stderr, second.stderr
    here = train(run, 2, *LOCAL)
    assert here.returncode == 2 and f"in use by local job {controller}" in here.stderr, here.stderr
    assert subprocess.run(cli + ["cancel", str(run)], cwd=REPO, env=env, timeout=60).returncode == 0
    psutil.Process(controller).wait(timeout=120)
    again = subprocess.run(cli + ["cancel", str(run)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to cancel" in again.stdout
    assert not (run / "checkpoints").exists() and list(ckpts.glob("step_*/COMMITTED"))
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("process_start") == 1  # not restarted
    stopped = next(e["step"] for e in events if e["event"] == "checkpoint_committed")
    assert not (run / "summary.json").exists() and stopped < 100
    status = subprocess.run(cli + ["status", str(run), "--json"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    info = json.loads(status.stdout)
    assert info["state"] == "STOPPED" and info["latest_checkpoint"] == stopped
    assert info["failure"] is None, info  # every rank stopped on the cancel: none was killed
    assert info["next"] == f"hpcorch resume {info['key']}"
    resumed = subprocess.run(cli + ["resume", str(run)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    got = summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"] and got["steps_recomputed"] == 0
