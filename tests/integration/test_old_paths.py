"""Jobs queued or requeued across the stage-folder upgrade keep working (one release).

A job submitted before it holds a submitit pickle naming ``hpcorch.submit.task.TrainTask`` and a
script that runs ``python -m hpcorch.recovery`` and ``python -m hpcorch.health``. The pickle in
tests/data/compat was written by hpcorch at commit e241fde (the last release with the old tree).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcorch import protocol
from hpcorch.batch.task import TrainTask
from hpcorch.plan.plan import make_plan
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.state.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
OLD_PICKLE = REPO / "tests" / "data" / "compat" / "submitted-e241fde.pkl"


def test_an_old_submission_unpickles_as_todays_task():
    from submitit.core.utils import DelayedSubmission

    task = DelayedSubmission.load(OLD_PICKLE).function
    assert type(task) is TrainTask  # the same class, reached through the old path
    assert (task.job_file, task.run_dir, task.scheduler, task.peak_tflops) == (
        "/scratch/u/hpcorch/gpt-tiny/job.yaml", "/scratch/u/hpcorch/gpt-tiny", "slurm", 989.0)


def _run(module: str, *args, env=None):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def run_dir(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    run.write_job(load_job(REPO / "jobs" / "gpt-tiny.yaml"))
    return run


@pytest.mark.parametrize("old, new", [("hpcorch.recovery", "hpcorch.batch.recovery")])
def test_an_old_scripts_recovery_line_runs_todays_recovery(run_dir, old, new):
    """The old script's ``|| exec python -m hpcorch.recovery ... --exit-code $?`` after a rank that
    stopped by the protocol: recovery leaves it alone and passes the exit code on."""
    args = ["--run-dir", str(run_dir.root), "--profile", "local", "--stage", "train",
            "--exit-code", str(protocol.CHECKPOINTED)]
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node1"}
    before, after = _run(old, *args, env=env), _run(new, *args, env=env)
    assert before.returncode == after.returncode == protocol.CHECKPOINTED, before.stderr
    assert before.stderr == after.stderr
    assert _run(old, "--stage", "nonsense").returncode == 2  # the same argument parser


def test_an_old_scripts_preflight_line_runs_todays_checks(tmp_path):
    """``python -m hpcorch.health preflight ...`` as the old script wrote it (local checks only)."""
    from hpcorch.batch.health import criteria

    plan = make_plan(load_job(REPO / "jobs" / "gpt-tiny.yaml"), load_profile("local"),
                     run_dir=str(tmp_path / "run"))
    args = criteria.for_job(plan.profile, plan).to_args()
    results = {}
    for module in ("hpcorch.health", "hpcorch.batch.health"):
        out = tmp_path / module
        done = _run(module, "preflight", "--run-dir", str(out), "--no-allreduce", *args)
        results[module] = (done.returncode, sorted(p.name for p in out.rglob("*") if p.is_file()))
    assert results["hpcorch.health"] == results["hpcorch.batch.health"]
    assert results["hpcorch.health"][1], "the pre-flight wrote no report"
