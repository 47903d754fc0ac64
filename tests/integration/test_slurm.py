"""Against the real Slurm dev cluster (slurmctld, slurmd x4, slurmdbd + MariaDB, munge)."""
import re

import pytest
from slurmhelp import Jobs, script, wait_for_file

from hpcorch.cluster.slurmconf import topology_conf
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


@pytest.fixture
def jobs(slurm):
    tracker = Jobs(slurm)
    yield tracker
    tracker.cleanup()


@pytest.mark.parametrize("job", ["gpt-tiny", "gpt2-124m"])
def test_shipped_jobs_pass_test_only(repo, slurm, tmp_path, job):
    plan = make_plan(load_job(repo / "jobs" / f"{job}.yaml"), load_profile("devcluster"), run_dir=tmp_path)
    message = slurm.test_only(render_sbatch(plan))
    assert re.search(r"to start at", message), message


def test_submit_check_asks_the_live_cluster(slurm, tmp_path):
    from conftest import run_cli

    env = {"SLURM_CONF": slurm.env["SLURM_CONF"], "HPCORCH_HOME": str(tmp_path / "home")}
    ok = run_cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--check", "--run-dir", tmp_path / "r", env=env)
    assert ok.returncode == 0 and "to start at" in ok.stdout, ok.stderr
    local = run_cli("submit", "jobs/gpt-tiny.yaml", "--check", env=env)
    assert local.returncode == 2 and "--check asks a Slurm cluster" in local.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "home" / "registry.sqlite").exists()


def test_test_only_rejects_what_does_not_fit(slurm):
    from hpcorch.cluster.slurm import SlurmError

    with pytest.raises(SlurmError, match="rejected"):
        slurm.test_only(script("true", "--nodes=5", "--time=1"))


def test_two_nodes_two_tasks_each(slurm, jobs, tmp_path):
    out = tmp_path / "tasks.out"
    body = ("srun bash -c 'echo task $SLURM_PROCID node=$SLURMD_NODENAME local=$SLURM_LOCALID "
            "ntasks=$SLURM_NTASKS nnodes=$SLURM_NNODES cvd=$CUDA_VISIBLE_DEVICES'")
    job_id = jobs.submit(script(body, "--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2",
                                "--time=2", f"--output={out}"))
    assert slurm.wait_for(job_id, {"COMPLETED", "FAILED"}, timeout_s=120) == "COMPLETED"
    lines = sorted(line for line in out.read_text().splitlines() if line.startswith("task"))
    assert len(lines) == 4
    nodes = set()
    for rank, line in enumerate(lines):
        fields = dict(f.split("=", 1) for f in line.split()[2:])
        assert line.startswith(f"task {rank} ")
        assert fields["ntasks"] == "4" and fields["nnodes"] == "2"
        assert fields["cvd"] == "0,1"
        nodes.add(fields["node"])
    assert len(nodes) == 2
    assert slurm.wait_for_accounting(job_id, "COMPLETED") == "COMPLETED"


def test_requeue_after_node_down(slurm, jobs, tmp_path):
    log = tmp_path / "runs.log"
    body = (f'echo "restart=${{SLURM_RESTART_COUNT:-unset}} nodes=$SLURM_JOB_NODELIST" >> {log}\n'
            'if [ -n "${SLURM_RESTART_COUNT:-}" ]; then exit 0; fi\nsleep 300')
    job_id = jobs.submit(script(body, "--nodes=2", "--time=10", "--requeue", "--open-mode=append",
                                f"--output={tmp_path}/out.log"))
    slurm.wait_for(job_id, "RUNNING", timeout_s=60)
    wait_for_file(log)
    victim = _expand(slurm.job(job_id)["NodeList"])[0]
    slurm.set_node(victim, "DOWN", reason="test-node-failure")
    slurm.wait_for(job_id, {"PENDING", "REQUEUED"}, timeout_s=60)
    slurm.start_now(job_id)
    assert slurm.wait_for(job_id, {"COMPLETED", "FAILED"}, timeout_s=120) == "COMPLETED"
    runs = log.read_text().splitlines()
    assert runs[0].startswith("restart=unset") and runs[1].startswith("restart=1")
    assert victim not in _expand(runs[1].split("nodes=")[1])
    assert slurm.job(job_id).get("Restarts") == "1"


def _expand(hostlist):
    from hpcorch.spec.units import expand_hostlist

    return expand_hostlist(hostlist)


def test_preemption_signals_and_requeues(slurm, jobs, tmp_path):
    marker = tmp_path / "signals.log"
    body = (f'trap \'echo "USR2 restart=${{SLURM_RESTART_COUNT:-0}}" >> {marker}\' USR2\n'
            f'echo "start restart=${{SLURM_RESTART_COUNT:-0}}" >> {marker}\n'
            'if [ -n "${SLURM_RESTART_COUNT:-}" ]; then exit 0; fi\n'
            'for i in $(seq 600); do sleep 0.5; done')
    low = jobs.submit(script(body, "--partition=batch", "--nodes=4", "--exclusive", "--time=10",
                             "--requeue", "--signal=B:USR2@60", f"--output={tmp_path}/low.out"))
    slurm.wait_for(low, "RUNNING", timeout_s=60)
    wait_for_file(marker)
    high = jobs.submit(script("sleep 1", "--partition=urgent", "--nodes=4", "--exclusive", "--time=2",
                              f"--output={tmp_path}/high.out"))
    wait_for_file(marker, lambda text: "USR2" in text, timeout_s=60)
    assert slurm.wait_for(high, "COMPLETED", timeout_s=150) == "COMPLETED"
    slurm.wait_for(low, {"PENDING", "REQUEUED", "RUNNING", "COMPLETED"}, timeout_s=60)
    if slurm.state(low) == "PENDING":
        slurm.start_now(low)
    assert slurm.wait_for(low, "COMPLETED", timeout_s=120) == "COMPLETED"
    assert "start restart=1" in marker.read_text()
    assert int(slurm.job(low).get("Restarts", "0")) >= 1


def test_topology_matches_profile(slurm, devcluster):
    shown = slurm.run("scontrol", "show", "topology")
    got = {}
    for line in shown.splitlines():
        fields = dict(t.split("=", 1) for t in line.split() if "=" in t)
        got[fields["SwitchName"]] = fields.get("Switches") or fields["Nodes"]
    expected = {}
    for line in topology_conf(devcluster.profile).splitlines()[1:]:
        fields = dict(t.split("=", 1) for t in line.split())
        expected[fields["SwitchName"]] = fields.get("Switches") or fields["Nodes"]
    assert got == expected
    assert (devcluster.etc / "topology.conf").read_text() == topology_conf(devcluster.profile)
