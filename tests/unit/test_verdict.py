"""The verdict that stops a doomed job: attempts that commit no new checkpoint, counted in a
real run directory through the protocol's budget and through the batch host's recovery (Slurm
faked: the dev-cluster test of the same path is tests/integration/test_elastic_slurm.py)."""
import json

import pytest
from fake_slurm import FakeSlurm

from hpcorch.batch.failure import TRAIN_MARKER
from hpcorch.protocol import Action, Cause, RestartBudget, decide, no_progress
from hpcorch.spec.job import RequeuePolicy, load_job
from hpcorch.spec.schema import Invalid
from hpcorch.state.rundir import COMMIT_MARKER, RunDir


def _commit(run: RunDir, step: int) -> None:
    folder = run.checkpoint_layout.step_dir(step)
    folder.mkdir(parents=True)
    (folder / COMMIT_MARKER).write_text(json.dumps({"step": step}))


def _requeue(budget: RestartBudget, cause: Cause, policy: RequeuePolicy):
    decision = decide(cause, budget.load(), policy, "slurm", 0)
    budget.record(cause, decision)
    return decision


def test_attempts_without_a_new_checkpoint_stop_the_job_with_one_line(tmp_path):
    run, policy = RunDir(tmp_path), RequeuePolicy(no_progress_attempts=2, max_node_failures=10)
    budget = RestartBudget(run)
    _commit(run, 20)
    assert _requeue(budget, Cause.NODE_FAILURE, policy).action is Action.REQUEUE   # attempt 1 reached 20
    assert _requeue(budget, Cause.NODE_FAILURE, policy).action is Action.REQUEUE   # 2: none new (one)
    _commit(run, 40)
    assert _requeue(budget, Cause.TIMEOUT, policy).action is Action.REQUEUE        # 3: progress resets it
    assert _requeue(budget, Cause.NODE_FAILURE, policy).action is Action.REQUEUE   # 4: none new (one)
    stop = _requeue(budget, Cause.NODE_FAILURE, policy)                             # 5: none new (two)
    assert stop.action is Action.REFUSE
    assert stop.reason.startswith("no progress: 2 attempts in a row committed no new checkpoint "
                                  "(still at the checkpoint of step 40)")
    data = json.loads(run.restarts_file.read_text())
    assert data["refused"] == stop.reason and "\n" not in stop.reason
    assert data["checkpoints"] == [20, 20, 40, 40] and "latest_checkpoint" not in data
    assert data["node_failure"] == 3 and data["timeout"] == 1


def test_a_run_that_never_commits_stops_too_but_preemptions_and_zero_never_do(tmp_path):
    policy = RequeuePolicy(no_progress_attempts=1, max_preemptions=5)
    spent = {"preemption": 0, "timeout": 0, "node_failure": 0, "checkpoints": [None], "latest_checkpoint": None}
    assert "(no checkpoint committed yet)" in no_progress(spent, 1)
    assert decide(Cause.NODE_FAILURE, spent, policy, "slurm", 0).action is Action.REFUSE
    # The scheduler's own stop is no verdict on the job; 0 turns the verdict off.
    assert decide(Cause.PREEMPTION, spent, policy, "slurm", 0).action is Action.REQUEUE
    assert no_progress(spent, 0) is None
    assert decide(Cause.NODE_FAILURE, spent, RequeuePolicy(no_progress_attempts=0), "slurm", 0).action is Action.REQUEUE
    assert no_progress({**spent, "checkpoints": []}, 1) is None  # the first attempt's start is unknown
    # Old restarts.json files (no history) read as none.
    assert no_progress({"node_failure": 2, "latest_checkpoint": 5}, 3) is None


def test_the_key_is_validated():
    with pytest.raises(Invalid, match="no_progress_attempts"):
        RequeuePolicy(no_progress_attempts=-1)
    assert RequeuePolicy().no_progress_attempts == 3


# ----- through the batch host's recovery, in a real run directory ----------------------------
def _attempt(run: RunDir, fake: FakeSlurm, attempt: int, node: str, step: int, exc: str = "") -> dict:
    """One failed training step of attempt ``attempt``: ``node``'s ranks killed at ``step``."""
    fake.job("7", "RUNNING", nodes="node[1-4]", partition="batch", exc=exc)
    (run.root / "progress.json").write_text(json.dumps({"step": step - 1}))
    log = run.batch_log("err", "7")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"{TRAIN_MARKER} (attempt {attempt})\nsrun: error: {node}: task 1: Killed\n")
    return {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": str(attempt), "SLURM_JOB_NODELIST": "node[1-4]"}


def test_recovery_stops_a_job_whose_attempts_commit_nothing_and_status_shows_why(tmp_path, monkeypatch):
    from hpcorch.batch.recovery import Recovery
    from hpcorch.cluster.slurm import Slurm
    from hpcorch.observe.status import progress
    from hpcorch.state.registry import Entry

    monkeypatch.setenv("HPCORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPCORCH_REQUEUE_HOLD", "keep")  # no detached helper from a unit test
    fake = FakeSlurm(tmp_path).partition("batch", "node[1-16]")
    job = load_job("gpt-tiny")
    job.requeue = RequeuePolicy(no_progress_attempts=2, max_node_failures=10, crash_loop=0)
    run = RunDir.for_job(tmp_path / "run", job)
    run.write_job(job)
    _commit(run, 10)
    slurm = Slurm(env=fake.env)
    excluded = ""
    for attempt, node in enumerate(["node2", "node3"]):  # a new node killed each time, never the step
        env = _attempt(run, fake, attempt, node, step=11 + attempt, exc=excluded)
        Recovery(run, "devcluster", 1.0, slurm=slurm, environ=env).after("train", 1)
        assert fake.state("7") == "PENDING", attempt
        excluded = fake.excluded("7")
    assert excluded == "node[2-3]"
    env = _attempt(run, fake, 2, "node4", step=13, exc=excluded)
    Recovery(run, "devcluster", 1.0, slurm=slurm, environ=env).after("train", 1)
    assert fake.state("7") == "RUNNING"  # not requeued: the batch script ends with the failure
    budget = json.loads(run.restarts_file.read_text())
    assert budget["node_failure"] == 2 and budget["checkpoints"] == [10, 10]
    assert budget["refused"].startswith("no progress: 2 attempts in a row committed no new checkpoint "
                                        "(still at the checkpoint of step 10)")
    entry = Entry(key=1, job_id="7", name="gpt-tiny", profile="devcluster", scheduler="slurm",
                  run_dir=str(run.root), job_file=str(run.job_file), slurm_conf=None, exclude=None,
                  submitted=0.0, resumed_from=None)
    assert progress(entry)["note"] == budget["refused"]


@pytest.mark.parametrize("excluded,requeued", [("", True), ("node1", False)])
def test_recovery_requeues_a_node_range_while_its_fewest_nodes_are_left(tmp_path, monkeypatch, excluded, requeued):
    """``resources.nodes: 3-4``: after node2 fails, 3 nodes left start it again (a fixed 4
    would wait for ever); with node1 excluded already, 2 are left and the job stops, saying so."""
    from hpcorch.batch.recovery import Recovery
    from hpcorch.cluster.slurm import Slurm

    monkeypatch.setenv("HPCORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPCORCH_REQUEUE_HOLD", "keep")
    fake = FakeSlurm(tmp_path).partition("batch", "node[1-4]")
    job = load_job("gpt-tiny", ["resources.nodes=3-4", "resources.tasks_per_node=1", "trainer.global_batch=12",
                                "trainer.micro_batch=1"])
    assert (job.resources.nodes_min, job.resources.nodes) == (3, 4)
    run = RunDir.for_job(tmp_path / "run", job)
    run.write_job(job)
    env = _attempt(run, fake, 0, "node2", step=5, exc=excluded)
    Recovery(run, "devcluster", 1.0, slurm=Slurm(env=fake.env), environ=env).after("train", 1)
    refused = json.loads(run.restarts_file.read_text())["refused"]
    if requeued:
        assert fake.state("7") == "PENDING" and fake.excluded("7") == "node2" and not refused
    else:
        assert fake.state("7") == "RUNNING"
        assert refused == ("without node[1-2] partition batch has 2 of the 3 nodes this job needs at least "
                           "(resources.nodes 3-4); release a node (hpcorch nodes clear NODE) and resume"), refused
