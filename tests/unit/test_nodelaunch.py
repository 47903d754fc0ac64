"""The Slurm node launcher's pieces without a cluster: the per-rank identity srun would give,
srun's log patterns, the training step it renders (by default), and its srun options. The launcher
itself runs on the dev cluster in tests/integration/test_nodelaunch_slurm.py."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from hpcorch.batch import nodelaunch
from hpcorch.batch.nodelaunch import log_path, rank_identity
from hpcorch.errors import PlanError
from hpcorch.plan import nodestep
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile


def test_each_forked_rank_gets_sruns_block_identity():
    env = {"SLURM_STEP_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_CPUS_PER_TASK": "8"}
    got = [rank_identity(env, r, 2) for r in range(2)]
    assert [g["SLURM_PROCID"] for g in got] == ["2", "3"] and [g["SLURM_LOCALID"] for g in got] == ["0", "1"]
    assert got[0]["SLURM_NTASKS"] == got[0]["SLURM_STEP_NUM_TASKS"] == "4"
    assert got[0]["SLURM_TASKS_PER_NODE"] == "2(x2)" and got[0]["SLURM_CPUS_PER_TASK"] == "4"
    assert got[1]["SLURM_GTIDS"] == "2,3"


def test_log_patterns_expand_as_srun_does():
    env = {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"}
    assert log_path("/r/submitit/%j/%j_%t_log.out", env, 5) == "/r/submitit/77/77_5_log.out"
    assert log_path("/r/%A_%a/%A_%a_%t_log.err", env, 0) == "/r/70_3/70_3_0_log.err"
    assert log_path("/r/100%%_%x", env, 1) == "/r/100%_%x"


def test_cpu_shares_are_contiguous_slices_of_the_launchers_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [nodelaunch._cpu_share(r, 4, 8) for r in range(4)] == [{0, 1}, {2, 3}, {4, 5}, {6, 7}]
    assert nodelaunch._cpu_share(0, 4, 16) is None  # the launcher holds another count: no binding implied


BECOME = """
import argparse, os, sys
from hpcorch.batch.nodelaunch import _become_rank
args = argparse.Namespace(tasks_per_node=int(sys.argv[1]), output=sys.argv[2], error=sys.argv[2] + ".err")
_become_rank(args, int(sys.argv[3]))
print(sorted(os.sched_getaffinity(0)), os.environ["SLURM_PROCID"], os.environ["SLURM_CPUS_PER_TASK"])
"""


def test_a_forked_rank_takes_its_cpu_share_from_the_launchers_allocation(tmp_path):
    """The rank's own SLURM_CPUS_PER_TASK (its share) must not hide the launcher's (the node's)."""
    cpus = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "SLURM_CPUS_PER_TASK": str(len(cpus)), "SLURM_NNODES": "1", "SLURM_NODEID": "0"}
    last = len(cpus) - 1
    subprocess.run([sys.executable, "-c", BECOME, str(len(cpus)), str(tmp_path / "%t.out"), str(last)],
                   env=env, check=True, timeout=60)
    assert (tmp_path / f"{last}.out").read_text().split("]")[0] + "]" == str([cpus[last]])


def _script(repo, monkeypatch, launcher: str, **sets) -> str:
    monkeypatch.setenv(nodestep.ENV, launcher)
    job = load_job(repo / "jobs/gpt-tiny.yaml", overrides=[f"{k}={v}" for k, v in sets.items()])
    plan = make_plan(job, load_profile(repo / "cluster_profiles/devcluster.yaml"), run_dir="/scratch/run", python=None)
    return render_sbatch(plan)


def test_the_training_step_is_one_launcher_per_node_unless_told_not_to(repo, monkeypatch):
    sets = {"resources.nodes": 2, "resources.tasks_per_node": 2, "trainer.global_batch": 32}
    off = _script(repo, monkeypatch, "0", **sets)
    on = _script(repo, monkeypatch, "", **sets)
    assert on == _script(repo, monkeypatch, "1", **sets)
    assert "submitit.core._submit /scratch/run/submitit/%j" in off and "nodelaunch" not in off
    changed = [(a, b) for a, b in zip(off.splitlines(), on.splitlines(), strict=True) if a != b]
    assert len(changed) == 2, changed  # the srun line and its command, nothing else
    assert changed[0][1].startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=2 "
                                    "--unbuffered --kill-on-bad-exit=1 \\")
    assert changed[1][1].endswith("-u -m hpcorch.batch.nodelaunch /scratch/run/submitit/%j --tasks-per-node 2 "
                                  "--output /scratch/run/submitit/%j/%j_%t_log.out "
                                  "--error /scratch/run/submitit/%j/%j_%t_log.err \\")


@pytest.mark.parametrize("option", ["--cpu-bind=map_cpu:0,1", "--gpu-bind=closest", "--distribution=*:block",
                                    "--mem-bind=local"])
def test_srun_options_that_place_each_task_keep_a_task_per_rank(repo, monkeypatch, option):
    """Bound one by one, a node launcher's ranks would all share the first task's CPUs or GPU."""
    monkeypatch.setenv(nodestep.ENV, "")
    job = load_job(repo / "jobs/gpt-tiny.yaml", overrides=[f"launch.srun_options=[{option!r}]"])
    plan = make_plan(job, load_profile(repo / "cluster_profiles/devcluster.yaml"), run_dir="/scratch/run", python=None)
    assert not plan.node_launcher
    assert "-m submitit.core._submit /scratch/run/submitit/%j" in render_sbatch(plan)
    assert any(option in note and "one srun task per rank" in note for note in plan.notes), plan.notes


@pytest.mark.parametrize("sets", [{"resources.extra_directives": '["--gpu-bind=closest"]'},
                                  {"resources.extra_directives": '["--distribution=block:cyclic"]'}])
def test_binding_in_a_directive_keeps_a_task_per_rank(repo, monkeypatch, sets):
    """sbatch exports its --gpu-bind/--distribution as the variables srun reads for its steps."""
    monkeypatch.setenv(nodestep.ENV, "")
    job = load_job(repo / "jobs/gpt-tiny.yaml", overrides=[f"{k}={v}" for k, v in sets.items()])
    plan = make_plan(job, load_profile(repo / "cluster_profiles/devcluster.yaml"), run_dir="/scratch/run", python=None)
    assert not plan.node_launcher and any("one srun task per rank" in note for note in plan.notes), plan.notes


def test_binding_to_none_binds_nothing(repo, monkeypatch):
    monkeypatch.setenv(nodestep.ENV, "")
    job = load_job(repo / "jobs/gpt-tiny.yaml", overrides=['launch.srun_options=["--cpu-bind=none"]'])
    assert make_plan(job, load_profile(repo / "cluster_profiles/devcluster.yaml"), run_dir="/scratch/run",
                     python=None).node_launcher


def test_a_node_range_launches_one_task_per_allocated_node(repo, monkeypatch):
    text = _script(repo, monkeypatch, "1", **{"resources.nodes": "1-2", "resources.tasks_per_node": 2,
                                               "trainer.global_batch": 32})
    assert 'srun --nodes="$HPCORCH_NODES" --ntasks="$HPCORCH_NODES" --ntasks-per-node=1 --cpus-per-task=2 ' in text


def test_gpus_asked_per_task_become_the_nodes_gpus():
    res = SimpleNamespace(tasks_per_node=4, cpus_per_task=8, gpus_per_node=4)
    assert nodestep.step_options(res, "--gpus-per-task=a100:1") == [
        "--ntasks-per-node=1", "--cpus-per-task=32", "--gpus-per-task=a100:4"]
    assert nodestep.step_options(res, "--gpus-per-task=1")[-1] == "--gpus-per-task=4"
    assert nodestep.step_options(res, "--gpus-per-node=4") == ["--ntasks-per-node=1", "--cpus-per-task=32"]


def test_a_bad_switch_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(nodestep.ENV, "yes")
    with pytest.raises(PlanError, match="HPCORCH_NODE_LAUNCHER"):
        nodestep.asked()
