"""The watcher a failed rank leaves for Slurm's own requeue (hpcorch.batch.recovery): one per
attempt, whichever rank asks first; it waits for the requeue, cuts the hold, and gives up when
the job ends without one. The real path runs in tests/integration/test_holds_slurm.py."""
import signal

import pytest

from hpcorch.batch import recovery
from hpcorch.state.rundir import RunDir


class _Slurm:
    """The controller's answers to ``scontrol show job``, one per call (the last one repeats)."""

    def __init__(self, *answers: dict):
        self.answers, self.started = list(answers), []

    def job(self, job_id):
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def start_now(self, job_id, check=False):
        self.started.append(job_id)


@pytest.fixture
def popen(monkeypatch):
    started = []
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: started.append(a[0]))
    monkeypatch.delenv(recovery.HOLD_ENV, raising=False)
    return started


def test_one_watcher_per_attempt_whichever_rank_asks_first(tmp_path, popen):
    run = RunDir(tmp_path / "run")
    env = {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}
    before = signal.getsignal(signal.SIGTERM)
    assert recovery.watch_for_slurms_requeue(run, env) is True
    assert recovery.watch_for_slurms_requeue(run, env) is False  # another rank of the same attempt
    assert popen == [popen[0]] and popen[0][-3:] == ["--start-when-pending", "7", "2"]
    assert (tmp_path / "run" / "exits" / "attempt-2" / "hold-watch").exists()
    assert signal.getsignal(signal.SIGTERM) == before
    # an array task is named A_i; the next attempt has its own watcher
    env = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "1", "SLURM_RESTART_COUNT": "3"}
    assert recovery.watch_for_slurms_requeue(run, env) is True and popen[-1][-2:] == ["5_1", "3"]
    assert recovery.watch_for_slurms_requeue(run, {}) is False  # not under Slurm


def test_keep_leaves_the_hold_and_no_marker(tmp_path, popen, monkeypatch):
    monkeypatch.setenv(recovery.HOLD_ENV, "keep")
    assert recovery.watch_for_slurms_requeue(RunDir(tmp_path), {"SLURM_JOB_ID": "7"}) is False
    assert popen == [] and not (tmp_path / "exits").exists()


def test_the_watcher_waits_for_slurms_requeue_then_cuts_the_hold(monkeypatch):
    monkeypatch.setattr(recovery.time, "sleep", lambda s: None)
    slurm = _Slurm({"JobState": "RUNNING", "Restarts": "0"},          # the dead node not yet down
                   {"JobState": "COMPLETING", "Restarts": "1"},        # requeued, still completing
                   {"JobState": "PENDING", "Reason": "BeginTime", "Restarts": "1"})
    assert recovery._start_when_pending("7", after_attempt=0, patience_s=30, slurm=slurm) == 0
    assert slurm.started == ["7"]


@pytest.mark.parametrize("state", ["FAILED", "CANCELLED", "NODE_FAIL"])
def test_the_watcher_gives_up_when_the_job_ends_unrequeued(monkeypatch, state):
    slurm = _Slurm({"JobState": "RUNNING", "Restarts": "1"}, {"JobState": state, "Restarts": "1"})
    assert recovery._start_when_pending("7", after_attempt=1, patience_s=30, slurm=slurm) == 1
    assert slurm.started == []
    gone = _Slurm({})  # Slurm forgot the job
    assert recovery._start_when_pending("7", after_attempt=1, patience_s=30, slurm=gone) == 1


def test_a_command_that_reads_the_job_cuts_slurms_requeue_hold(monkeypatch):
    """Where no watcher outlives the job (process tracking by cgroup), the client cuts the hold:
    only of a requeued job waiting out BeginTime, not in the requeue's first seconds, not with keep."""
    from datetime import datetime, timedelta

    monkeypatch.delenv(recovery.HOLD_ENV, raising=False)
    long_ago = (datetime.now() - timedelta(seconds=30)).isoformat(timespec="seconds")
    just_now = datetime.now().isoformat(timespec="seconds")
    held = {"JobState": "PENDING", "Reason": "BeginTime", "Restarts": "1", "SubmitTime": long_ago}
    for info, cut in [(held, True), ({**held, "SubmitTime": just_now}, False), ({**held, "Restarts": "0"}, False),
                      ({**held, "Reason": "Priority"}, False), ({**held, "SubmitTime": "Unknown"}, False)]:
        slurm = _Slurm(info)
        assert recovery.lift_requeue_hold(slurm, "7") is cut and slurm.started == (["7"] if cut else []), info
    monkeypatch.setenv(recovery.HOLD_ENV, "keep")
    assert recovery.lift_requeue_hold(_Slurm(held), "7") is False


def test_the_client_honours_a_job_that_keeps_its_hold(tmp_path, monkeypatch):
    from hpcorch.state.registry import Entry
    from hpcorch.submit import slurm as backend

    asked = []
    monkeypatch.setattr(recovery, "lift_requeue_hold", lambda slurm, job_id: asked.append(job_id) or True)
    entry = Entry(key=1, job_id="7", name="j", profile="p", scheduler="slurm", run_dir=str(tmp_path),
                  job_file=str(tmp_path / "job.yaml"), slurm_conf=None, exclude=None, submitted=0.0, resumed_from=None)
    assert backend._lift_hold(entry) is True and asked == ["7"]  # no job.yaml: this command's environment decides
    (tmp_path / "job.yaml").write_text("name: j\nenvironment:\n  HPCORCH_REQUEUE_HOLD: keep\n")
    assert backend._lift_hold(entry) is False and asked == ["7"]
