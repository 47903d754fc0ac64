"""The run directory's owner: names, atomic writes, reads without torch, and the lease."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from trainhelp import REPO, train_cmd

from hpcorch.spec.job import load_job
from hpcorch.state.jobstate import lease_is_live
from hpcorch.state.rundir import COMMIT_MARKER, Lease, RunDir, RunDirBusy
from hpcorch.util.fileio import atomic_write


def test_checkpoints_follow_the_jobs_checkpoint_dir(tmp_path):
    job = load_job(REPO / "jobs/gpt-tiny.yaml", [f"trainer.checkpoint.dir={tmp_path / 'ck'}"])
    run = RunDir.for_job(tmp_path / "run", job)
    run.write_job(job)
    assert run.checkpoints == tmp_path / "ck"
    for step, committed in ((10, True), (20, True), (30, False)):
        folder = run.checkpoint_layout.step_dir(step)
        folder.mkdir(parents=True)
        if committed:
            (folder / COMMIT_MARKER).write_text("{}")
    reopened = RunDir.open(tmp_path / "run")  # as `hpcorch status` sees it: from job.yaml
    assert reopened.checkpoints == tmp_path / "ck" and reopened.latest_checkpoint() == 20
    assert RunDir(tmp_path / "run").latest_checkpoint() is None  # the default folder is empty


def test_rank_log_names_agree_with_submitit(tmp_path):
    from submitit.core.utils import JobPaths

    run = RunDir(tmp_path)
    for stream in ("out", "err"):
        pattern = run.rank_log_pattern(stream)
        paths = JobPaths(run.submitit_folder)  # submitit's own pattern, %j and %t unexpanded
        assert pattern == str(paths.stdout if stream == "out" else paths.stderr)
        assert run.rank_log("42", 3, stream) == tmp_path / "submitit" / "42" / f"42_3_log.{stream}"


def test_atomic_write_leaves_the_old_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, '{"v": 1}')

    def die(f, data):
        f.write(data[:3])
        raise KeyboardInterrupt  # the writer stops halfway

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, '{"v": 2}', fault=die)
    assert json.loads(path.read_text()) == {"v": 1}
    atomic_write(path, b'{"v": 3}', durable=False)
    assert json.loads(path.read_text()) == {"v": 3}


def test_reads_tolerate_missing_and_partial_files(tmp_path):
    run = RunDir(tmp_path)
    assert run.progress() == {} and run.last_metrics() == {} and run.lease() is None
    run.metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    assert run.last_metrics()["loss"] == 1.5
    run.lease_file.write_text("{not json")
    assert run.lease() is None


def test_lease_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    run = RunDir(tmp_path)
    first = Lease("slurm", "100")
    run.claim(first, is_live=lambda lease: True)  # no holder yet
    run.claim(Lease("slurm", "100", attempt=1), is_live=lambda lease: True)  # the same job, requeued
    assert run.lease().attempt == 1
    with pytest.raises(RunDirBusy, match="in use by Slurm job 100"):
        run.claim(Lease("slurm", "200"), is_live=lambda lease: True)
    run.claim(Lease("slurm", "200"), is_live=lambda lease: False)  # the holder has ended
    assert run.lease().job_id == "200"


def test_process_leases_are_checked_against_the_process_table():
    me = psutil.Process()
    assert lease_is_live(Lease("process", str(me.pid), started=me.create_time()))
    assert not lease_is_live(Lease("process", str(me.pid), started=me.create_time() - 3600))  # pid reused
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not lease_is_live(Lease("process", str(dead.pid)))
    assert lease_is_live(Lease("process", "1", host="another-host"))  # cannot ask: never two writers


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_second_train_into_a_live_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(train_cmd(run, 1, "trainer.steps=100000", "trainer.checkpoint.interval=1000"),
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "progress.json").exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.2)
        job_before = (run / "job.yaml").read_text()
        second = subprocess.run(train_cmd(run, 1, "trainer.steps=7"), cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"in use by hpcorch train process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert (run / "job.yaml").read_text() == job_before  # the refused run wrote nothing
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 3
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The holder has ended: the lease no longer stands in the way (this run resumes and finishes).
    after = subprocess.run(train_cmd(run, 1, "trainer.steps=100000", "trainer.checkpoint.interval=1000",
                                     "trainer.steps=3", flags=("--allow-config-change",)),  # a shorter schedule
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert after.returncode == 0 and "resumed at step" in after.stdout, after.stdout + after.stderr


def test_only_the_lease_holders_attempt_may_commit(tmp_path, monkeypatch):
    from hpcorch.state.rundir import LEASE_ENV

    run = RunDir(tmp_path)
    run.take(Lease("slurm", "7", attempt=1))
    monkeypatch.delenv(LEASE_ENV, raising=False)
    run.check_fence()  # started without a lease (python -m hpcorch.train by hand): no fence
    monkeypatch.setenv(LEASE_ENV, Lease("slurm", "7", attempt=1).token())
    run.check_fence()
    monkeypatch.setenv(LEASE_ENV, Lease("slurm", "7", attempt=0).token())  # the replaced attempt
    with pytest.raises(RunDirBusy, match="not committing"):
        run.check_fence()


def test_a_fenced_rank_writes_no_commit_marker(tmp_path):
    torch = pytest.importorskip("torch")
    from hpcorch.train.checkpoint.store import CheckpointStore

    def taken_over():
        raise RunDirBusy("run directory now belongs to Slurm job 8")

    store = CheckpointStore(tmp_path, rank=0, world_size=1, fence=taken_over)
    with pytest.raises(RunDirBusy):
        store.save(5, {"w": torch.zeros(3)}, {"rng": 1}, {})
    assert store.committed_steps() == [] and not (tmp_path / "step_000000005" / COMMIT_MARKER).exists()


def test_relative_checkpoint_dir_is_written_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = load_job(REPO / "jobs/gpt-tiny.yaml", ["trainer.checkpoint.dir=ck"])
    RunDir.for_job(tmp_path / "run", job).write_job(job)
    monkeypatch.chdir("/")  # status, or a resume, from somewhere else
    assert RunDir.open(tmp_path / "run").checkpoints == tmp_path / "ck"


def test_a_local_job_whose_lease_moved_on_is_not_running(tmp_path):
    from hpcorch.state.jobstate import local_state
    from hpcorch.state.registry import Registry

    reg = Registry(tmp_path / "r.sqlite")
    me = psutil.Process()
    entry = reg.add(str(me.pid), "job", "local", "local", str(tmp_path / "run"), "job.yaml")
    run = RunDir(tmp_path / "run")
    run.take(Lease("local", str(me.pid), started=me.create_time()))
    assert local_state(entry) == "RUNNING"
    run.take(Lease("process", "1"))  # a later writer took the directory: our pid is someone else now
    assert local_state(entry) == "STOPPED"
    assert reg.get(entry.key).job_id == str(me.pid)  # registry numbers may be ints from Python


def test_followers_give_up_on_a_scheduler_that_never_answers(tmp_path, monkeypatch):
    from hpcorch.errors import HpcorchError
    from hpcorch.service import backend_for
    from hpcorch.state.registry import Registry

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no squeue, no sacct: the state stays UNKNOWN
    entry = Registry(tmp_path / "r.sqlite").add("123", "job", "x", "slurm", str(tmp_path), "job.yaml")
    done = backend_for(entry).ended_or_given_up(entry, patience_s=0.05)
    assert done() is False
    time.sleep(0.1)
    with pytest.raises(HpcorchError, match="has not answered"):
        done()


def test_submit_without_slurm_is_one_clear_line(tmp_path):
    from conftest import run_cli

    env = {"PATH": str(tmp_path / "empty"), "HPCORCH_HOME": str(tmp_path / "home")}
    for extra in ([], ["--check"]):
        out = run_cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", tmp_path / "r", *extra,
                      env=env)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_a_run_directory_below_a_file_is_one_clear_error(tmp_path):
    from conftest import run_cli

    (tmp_path / "afile").write_text("x")
    env = {"HPCORCH_HOME": str(tmp_path / "home")}
    for command in (["submit", "gpt-tiny", "--no-wait"], ["train", "gpt-tiny", "--nproc", "1"]):
        out = run_cli(*command, "--run-dir", tmp_path / "afile" / "run", env=env)
        assert out.returncode == 2 and "is a file, not a directory" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_failed_writes_leave_no_temporary_files(tmp_path):
    def disk_full(f, data):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "x.json", "{}", fault=disk_full)
    assert list(tmp_path.iterdir()) == []


def test_a_stale_summary_does_not_make_a_local_job_completed(tmp_path):
    from hpcorch.state.jobstate import local_state
    from hpcorch.state.registry import Registry

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    os.utime(run / "summary.json", (time.time() - 3600, time.time() - 3600))  # from an earlier run
    entry = Registry(tmp_path / "r.sqlite").add(str(dead.pid), "job", "local", "local", str(run), "job.yaml")
    assert local_state(entry) == "STOPPED"
    (run / "summary.json").write_text("{}")  # written by this submission's ranks
    assert local_state(entry) == "COMPLETED"


def test_resume_with_a_bad_exclude_is_one_clear_error(tmp_path):
    from conftest import run_cli

    out = run_cli("resume", "1", "--exclude", "bad[", env={"HPCORCH_HOME": str(tmp_path / "home")})
    assert out.returncode == 2 and out.stderr.startswith("error: --exclude: ") and "Traceback" not in out.stderr


def test_restart_count_is_the_progress_count_else_the_process_starts(tmp_path):
    import json

    from hpcorch.state.rundir import RunDir

    run = RunDir(tmp_path)
    assert run.restart_count() == 0  # nothing started yet
    for attempt in range(3):  # a program that reports no progress: its attempts' starts
        run.append_event("process_start", attempt=attempt)
    assert run.restart_count() == 2
    run.progress_file.write_text(json.dumps({"step": 5, "restarts": 1}))  # the trainer's word wins
    assert run.restart_count() == 1
