"""The trainer on CPU with real gloo process groups: parity, resume, crash safety."""
import json
import signal

import pytest
from trainhelp import losses, summary, traced_samples, train, train_and_signal

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted 2-rank run: the reference every resumed run must reproduce."""
    run = tmp_path_factory.mktemp("baseline")
    out = train(run, 2)
    assert out.returncode == 0, out.stdout + out.stderr
    return run


def test_same_seed_same_losses(baseline, tmp_path):
    out = train(tmp_path, 2)
    assert out.returncode == 0, out.stderr
    assert losses(tmp_path) == losses(baseline)
    assert summary(tmp_path)["weights_sha256"] == summary(baseline)["weights_sha256"]
    assert summary(baseline)["restarts"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2])
def test_signal_stop_and_resume_is_exact(baseline, tmp_path, sig):
    first = train_and_signal(tmp_path, at_step=9, sig=sig)
    assert first.returncode == 3, first.stdout
    assert "checkpoint committed" in first.stdout
    stopped = json.loads((tmp_path / "progress.json").read_text())["step"]
    assert stopped < 24, "the signal arrived too late to test a resume"
    second = train(tmp_path, 2)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resumed at step {stopped}" in second.stdout
    assert losses(tmp_path) == losses(baseline)
    got, ref = summary(tmp_path), summary(baseline)
    assert got["weights_sha256"] == ref["weights_sha256"]
    assert (got["restarts"], got["steps_recomputed"]) == (1, 0)


def _expected_samples(steps, global_batch=8):
    from trainhelp import REPO, TINY

    from hpcorch.spec.job import load_job
    from hpcorch.train.data import DataSource

    job = load_job(REPO / "jobs/gpt-tiny.yaml", TINY)
    data = DataSource(job.trainer.data, job.trainer.model.seq_len, job.trainer.seed)
    return {s: sorted(data.train.sample_id(p) for p in range((s - 1) * global_batch, s * global_batch))
            for s in steps}


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_other_world_size_sees_every_sample_once(tmp_path, before, after):
    trace = tmp_path / "trace"
    run = tmp_path / "run"
    env = {"HPCORCH_SAMPLE_TRACE": str(trace)}
    first = train(run, before, "trainer.steps=12", env=env)
    assert first.returncode == 0, first.stderr
    second = train(run, after, "trainer.steps=24", env=env, flags=("--allow-config-change",))  # a longer schedule
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed at step 12" in second.stdout
    got = traced_samples(trace)
    assert sorted(got) == list(range(1, 25))  # every step trained exactly once
    assert got == _expected_samples(range(1, 25))  # the same global sample sequence
    assert summary(run)["world_size"] == after


def test_sigkill_mid_checkpoint_keeps_previous(baseline, tmp_path):
    # Rank 0 kills itself with SIGKILL halfway through writing step 12's model file.
    crashed = train(tmp_path, 2, env={"HPCORCH_CRASH_IN_SAVE": "12:0"})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "step_000000006" / "COMMITTED").exists()
    assert not (ckpts / "step_000000012" / "COMMITTED").exists()
    resumed = train(tmp_path, 2)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed at step 6" in resumed.stdout
    got = summary(tmp_path)
    assert got["weights_sha256"] == summary(baseline)["weights_sha256"]
    assert got["steps_recomputed"] == 6 and got["restarts"] == 1
    assert not (ckpts / "step_000000012.tmp").exists()


def test_sigkill_while_pruning_never_leaves_a_half_deleted_commit(baseline, tmp_path):
    # Rank 0 kills itself halfway through deleting step 6's checkpoint (pruned when 18 commits).
    crashed = train(tmp_path, 2, env={"HPCORCH_CRASH_IN_PRUNE": "6"})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    ckpts = tmp_path / "checkpoints"
    old = ckpts / "step_000000006"
    assert old.exists() and not (old / "COMMITTED").exists()  # half deleted, and not committed
    assert (ckpts / "step_000000018" / "COMMITTED").exists()
    resumed = train(tmp_path, 2)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed at step 18" in resumed.stdout and "skipping corrupted" not in resumed.stdout
    assert summary(tmp_path)["weights_sha256"] == summary(baseline)["weights_sha256"]
    assert not old.exists()  # a later prune removed the leftover


@pytest.mark.parametrize("fault", ["HPCORCH_CRASH_IN_PRUNE=12", "HPCORCH_CRASH_IN_COMMIT=24"])
def test_a_kill_in_the_last_prune_or_commit_leaves_nothing_after_the_next_start(baseline, tmp_path, fault):
    """Killed while pruning step 12 after the last save (no later save would prune again), or
    while writing the last commit marker: the next start leaves only the kept checkpoints, no
    dead writer's file, and the weights of a run never stopped."""
    name, value = fault.split("=")
    crashed = train(tmp_path, 2, env={name: value})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    resumed = train(tmp_path, 2)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000000018", "step_000000024"]
    assert not list(ckpts.glob("*/*.tmp")) and (ckpts / "step_000000024" / "COMMITTED").exists()
    assert summary(tmp_path)["weights_sha256"] == summary(baseline)["weights_sha256"]


def test_config_mismatch_fails_loudly(baseline, tmp_path):
    first = train(tmp_path, 2, "trainer.steps=6")
    assert first.returncode == 0
    other = train(tmp_path, 2, "trainer.model.width=64")
    assert other.returncode == 2
    assert "does not match this job's config" in other.stderr and "width" in other.stderr
    assert "Traceback" not in other.stderr


def test_missing_resume_step_is_an_error(tmp_path):
    first = train(tmp_path, 1, "trainer.steps=6")
    assert first.returncode == 0
    import subprocess
    import sys

    from trainhelp import REPO, train_cmd

    out = subprocess.run(train_cmd(tmp_path, 1, "trainer.steps=12") + ["--resume-step", "5"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no committed checkpoint at step 5" in out.stderr
    assert sys  # noqa


@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked", "separate"])
def test_dead_peer_ends_the_run(tmp_path, fork):
    """A rank killed with SIGKILL mid-run must end the whole run, not leave the others hanging:
    ranks forked by the node launcher, or one interpreter per rank (HPCORCH_FORK_RANKS=0)."""
    import os
    import subprocess
    import time

    import psutil
    from trainhelp import REPO, train_cmd

    proc = subprocess.Popen(train_cmd(tmp_path, 2, "trainer.steps=100000"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HPCORCH_FORK_RANKS": fork})
    try:
        from slurmhelp import wait_progress

        wait_progress(tmp_path, 3)
        children = psutil.Process(proc.pid).children()
        launchers = [p for p in children if "--nproc" in p.cmdline()]  # the forked ranks' parent
        ranks = launchers[0].children() if launchers else \
            [p for p in children if "hpcorch.train" in " ".join(p.cmdline())]
        assert len(launchers) == (fork == "1")
        assert len(ranks) == 2
        os.kill(ranks[1].pid, signal.SIGKILL)
        start = time.monotonic()
        code = proc.wait(timeout=120)
        assert code == 137  # the root cause: rank 1 was killed
        assert time.monotonic() - start < 60
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
