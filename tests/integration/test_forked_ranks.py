"""`hpcorch train`'s node launcher (hpcorch.train.forked): one process imports torch and forks
the ranks. Real gloo ranks on CPU: the same numbers as one interpreter per rank, a failing rank
ends the others with its code, a launcher killed outright leaves no rank behind."""
import json
import os
import signal
import subprocess
import time

import psutil
import pytest
from slurmhelp import wait_progress
from trainhelp import REPO, losses, summary, train, train_cmd

from hpcorch.train.spawn import FORK_ENV

pytestmark = pytest.mark.timeout(600)


def _launchers(cli: psutil.Process) -> list[psutil.Process]:
    return [p for p in cli.children() if "--nproc" in p.cmdline() and "hpcorch.train" in p.cmdline()]


def _left_behind(run_dir) -> list[psutil.Process]:
    """Live processes whose command line names ``run_dir`` (the launcher and its forked ranks)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if str(run_dir) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _wait_gone(run_dir, timeout_s: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := _left_behind(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:  # by pid: only what this test started
        try:
            p.kill()
        except psutil.Error:
            pass


def test_forked_ranks_train_the_same_numbers_as_one_interpreter_per_rank(tmp_path):
    """Determinism: 4 forked ranks reproduce 4 separately started ranks bit for bit, and rank 0
    counts its start-up from the launcher's start (the imports it shares are in it)."""
    forked, separate = tmp_path / "forked", tmp_path / "separate"
    out = train(forked, 4, "trainer.steps=8")
    assert out.returncode == 0, out.stdout + out.stderr
    out = train(separate, 4, "trainer.steps=8", env={FORK_ENV: "0"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert losses(forked) == losses(separate) and len(losses(forked)) == 8
    assert summary(forked)["weights_sha256"] == summary(separate)["weights_sha256"]
    events = [json.loads(line) for line in (forked / "events.jsonl").read_text().splitlines()]
    phases = next(e for e in events if e["event"] == "first_step")["startup_s"]
    assert list(phases)[:3] == ["interpreter", "imports", "fork"], phases
    start = next(e for e in events if e["event"] == "process_start")["time"]
    first = next(e for e in events if e["event"] == "first_step")["time"]
    assert abs((first - start) - sum(phases.values())) < 0.05


@pytest.mark.parametrize("how, code", [("kill", 128 + signal.SIGKILL), ("error", 1)])
def test_a_failing_forked_rank_ends_the_others_with_its_code(tmp_path, how, code):
    """Rank 1 dies after step 3 (SIGKILL, as the OOM killer would, or a Python exception): the
    run ends with that rank's code (137, or 1 with its traceback), the other ranks and the
    launcher are ended, none is left behind."""
    proc = subprocess.Popen(train_cmd(tmp_path, 4, "trainer.steps=100000"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HPCORCH_CRASH_AT_STEP": f"3:1:{how}"})
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == code, out
        if how == "error":
            assert "Traceback" in out
        assert not _wait_gone(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill(_left_behind(tmp_path))


@pytest.mark.parametrize("fork", ["1", "0"])
def test_a_rank_killed_outright_is_one_line_naming_it_its_signal_and_the_last_checkpoint(tmp_path, fork):
    """Rank 1 is SIGKILLed after step 8 (as the OOM killer would), forked or one interpreter per
    rank: the run ends 137 with one line naming the rank, the signal, its likely sender and the
    step a run again resumes from (6), and no traceback (rank 0's gloo error is its consequence)."""
    got = train(tmp_path, 2, env={FORK_ENV: fork, "HPCORCH_CRASH_AT_STEP": "8:1:kill"}, timeout=180)
    try:
        assert got.returncode == 128 + signal.SIGKILL, got.stderr[-3000:]
        assert "Traceback" not in got.stdout + got.stderr, got.stderr[-3000:]
        assert got.stderr.strip().splitlines()[-1] == (
            "error: rank 1 was killed by SIGKILL (the kernel's OOM killer, or a kill -9); "
            "the run's last checkpoint is step 6")
        assert not _wait_gone(tmp_path)
    finally:
        _kill(_left_behind(tmp_path))


def test_a_launcher_killed_outright_leaves_no_rank(tmp_path):
    """SIGKILL to the node launcher (no chance to clean up): its ranks die with it."""
    proc = subprocess.Popen(train_cmd(tmp_path, 2, "trainer.steps=100000"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_progress(tmp_path, 2)
        (launcher,) = _launchers(psutil.Process(proc.pid))
        ranks = launcher.children()
        assert len(ranks) == 2
        launcher.kill()
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
        gone, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill(_left_behind(tmp_path))


def test_a_launcher_that_cannot_fork_safely_starts_one_interpreter_per_rank(tmp_path):
    """A thread at the fork (here numpy's OpenBLAS pool, which the user asked for) would be
    inherited half-way: the launcher says so and starts the ranks as separate interpreters."""
    out = train(tmp_path, 2, "trainer.steps=4", env={"OPENBLAS_NUM_THREADS": "4"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "forking them is unsafe (" in out.stderr and "threads are running" in out.stderr
    assert summary(tmp_path)["final_step"] == 4
