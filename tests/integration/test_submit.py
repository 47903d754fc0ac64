"""hpcorch submit on the real dev cluster: CPU training with gloo across emulated nodes,
through submitit, surviving preemption, node failure, the time limit and cancellation."""
import json
import os
import subprocess
import sys

import pytest
import yaml
from slurmhelp import Jobs, script, wait_for_file, wait_progress
from trainhelp import REPO, TINY, losses

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(480)]

CLUSTER = ["resources.nodes=2", "resources.tasks_per_node=2", "trainer.micro_batch=2",
           "trainer.steps=150", "trainer.checkpoint.interval=25"]


def _sets(extra=()):
    return [a for s in TINY + CLUSTER + list(extra) for a in ("--set", s)]


def hpcorch(*args, home, slurm_conf, timeout=120, expect=0):
    env = {**os.environ, "HPCORCH_HOME": str(home), "SLURM_CONF": slurm_conf}
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", *map(str, args)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == expect, out.stdout + out.stderr
    return out


@pytest.fixture
def ctx(slurm, devcluster, tmp_path):
    conf = str(devcluster.etc / "slurm.conf")
    jobs = Jobs(slurm)

    class Ctx:
        def submit(self, run_dir, *extra):
            hpcorch("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", run_dir, *_sets(extra),
                    home=tmp_path / "home", slurm_conf=conf)
            return self.entry(run_dir)

        def entry(self, ref):
            out = hpcorch("status", ref, "--json", home=tmp_path / "home", slurm_conf=conf)
            info = json.loads(out.stdout)
            jobs.ids.append(info["job_id"])
            return info

        def cli(self, *args, expect=0):
            return hpcorch(*args, home=tmp_path / "home", slurm_conf=conf, expect=expect)

    ctx = Ctx()
    ctx.slurm, ctx.jobs = slurm, jobs
    yield ctx
    jobs.cleanup()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same config and world size run locally, never interrupted."""
    run = tmp_path_factory.mktemp("reference")
    cmd = [sys.executable, "-m", "hpcorch.cli.main", "train", "jobs/gpt-tiny.yaml", "--nproc", "4",
           "--run-dir", str(run), *_sets(["resources.tasks_per_node=4", "resources.nodes=1"])]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((run / "summary.json").read_text())


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _stderr_tail(ctx, job_id, lines=40) -> str:
    """The end of the job's stderr, so that a failure in CI says why the job failed."""
    path = ctx.slurm.job(job_id).get("StdErr", "")
    try:
        return "\n".join(open(path, errors="replace").read().splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


def _finish(ctx, job_id, timeout_s=240):
    """Wait for the job, letting a requeued run start at once instead of after ~120 s."""
    from hpcorch.util.poll import poll_until

    def completed():
        state = ctx.slurm.state(job_id)
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            raise AssertionError(f"job {job_id} ended {state}; its stderr ends:\n{_stderr_tail(ctx, job_id)}")
        if state == "PENDING" and "BeginTime" in ctx.slurm.job(job_id).get("Reason", ""):
            ctx.slurm.start_now(job_id)
        return state == "COMPLETED" or None

    poll_until(completed, timeout_s, interval_s=0.5, what=f"job {job_id} COMPLETED")


def test_two_nodes_match_a_local_run(ctx, tmp_path, reference):
    run = tmp_path / "run"
    job = ctx.submit(run)
    _finish(ctx, job["job_id"])
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"]
    assert got["world_size"] == 4 and got["restarts"] == 0
    assert ctx.slurm.wait_for_accounting(job["job_id"], "COMPLETED") == "COMPLETED"
    # The script submitit sent is the dry run, byte for byte.
    dry = ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", run, *_sets(), "--dry-run")
    sent = (run / "submitit" / job["job_id"] / f"{job['job_id']}_submission.sh").read_text()
    assert dry.stdout == sent


def test_preemption_requeues_and_resumes_exactly(ctx, tmp_path, reference):
    run = tmp_path / "run"
    # 150 steps of the tiny model take ~3 s: slowed down, it is still training when preempted.
    job = ctx.submit(run, "environment.HPCORCH_STEP_DELAY_S=0.2")
    wait_progress(run, 40)
    _second_writers_are_refused(ctx, run, job, "still live")
    urgent = ctx.jobs.submit(script("sleep 1", "--partition=urgent", "--nodes=4", "--exclusive", "--time=2",
                                    f"--output={tmp_path}/urgent.out"))
    assert ctx.slurm.wait_for(urgent, "COMPLETED", timeout_s=150) == "COMPLETED"
    _finish(ctx, job["job_id"])
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"]
    assert got["restarts"] == 1 and got["steps_recomputed"] == 0
    budget = json.loads((run / "restarts.json").read_text())
    assert (budget["preemption"], budget["timeout"], budget["node_failure"]) == (1, 0, 0)


def _accept_config_change(run, change: str):
    """What --allow-config-change records, for a job.yaml edited under a requeued job: the
    ranks continue the checkpoint only under a config the user accepted."""
    from hpcorch.spec.compat import training_config
    from hpcorch.spec.job import load_job
    from hpcorch.state.rundir import RunDir

    RunDir(run).accept_config(training_config(load_job(run / "job.yaml")), [change])


def _second_writers_are_refused(ctx, run, job, why):
    """While a job is live (running, or requeued and pending) nothing else may train into its
    run directory: not a resume, not a second submit, not a local `hpcorch train`."""
    refused = ctx.cli("resume", job["key"], expect=2).stderr
    assert why in refused and "nothing to resume" in refused and "Traceback" not in refused
    again = ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", run, *_sets(), expect=2)
    assert f"in use by Slurm job {job['job_id']}" in again.stderr
    local = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "train", "jobs/gpt-tiny.yaml", "--nproc", "1",
                            "--run-dir", str(run), *_sets(["resources.nodes=1", "resources.tasks_per_node=1"])],
                           cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SLURM_CONF": str(ctx.slurm.env["SLURM_CONF"])})
    assert local.returncode == 2 and f"in use by Slurm job {job['job_id']}" in local.stderr, local.stderr
    rows = [r for r in json.loads(ctx.cli("ls", "--json").stdout) if r["run_dir"] == str(run)]
    assert len(rows) == 1, rows  # no second job was started


def test_preemption_during_start_up_counts_as_preemption(ctx, tmp_path, reference):
    """A signal before the trainer has started (kept from the rank's first moments, see
    hpcorch.protocol.catch_early) is a preemption within its budget, never a node failure, and
    loses nothing: the ranks stop at their first step boundary."""
    from hpcorch.state.rundir import RunDir

    run = tmp_path / "run"
    job = ctx.submit(run, "requeue.max_node_failures=0", "environment.HPCORCH_START_DELAY_S=30")
    job_id = job["job_id"]
    ctx.slurm.wait_for(job_id, "RUNNING", timeout_s=60)
    for rank in range(4):  # every rank's handlers are in place (submitit's "Loading pickle" is too early)
        wait_for_file(RunDir(run).rank_log(job_id, rank, "err"), lambda text: "HPCORCH_START_DELAY_S: waiting" in text)
    ctx.slurm.run("scancel", "--signal=USR2", job_id)  # to the ranks, as a preemption sends it
    _finish(ctx, job_id)
    log = RunDir(run).rank_log(job_id, 0, "out").read_text()
    assert "stopped by signal SIGUSR2 at step 1" in log and "after preemption: requeue" in log, log[-2000:]
    budget = json.loads((run / "restarts.json").read_text())
    assert (budget["preemption"], budget["node_failure"]) == (1, 0), budget
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"] and got["steps_recomputed"] == 0


def test_node_down_requeues_and_completes_elsewhere(ctx, tmp_path, reference):
    from hpcorch.spec.units import expand_hostlist

    run = tmp_path / "run"
    job = ctx.submit(run)
    wait_progress(run, 40)
    victim = expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])[0]
    ctx.slurm.set_node(victim, "DOWN", reason="test-node-failure")
    _finish(ctx, job["job_id"])
    assert victim not in expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])
    got = _summary(run)
    assert got["restarts"] == 1 and 0 <= got["steps_recomputed"] <= 25
    assert got["weights_sha256"] == reference["weights_sha256"]  # recomputed steps are deterministic
    assert json.loads((run / "restarts.json").read_text())["node_failure"] == 1


def test_time_limit_checkpoints_and_requeues(ctx, tmp_path):
    run = tmp_path / "run"
    # Slurm sends --signal up to one 30 s check early: with a 60 s limit and a 10 s lead it comes
    # 20-50 s after the start, after training has begun (a 40 s lead let it come at once).
    # HPCORCH_REQUEUE_HOLD=keep: Slurm's ~120 s hold stays, the window in which this test looks
    # at the requeued, pending job (hpcorch would otherwise let it start again within seconds).
    job = ctx.submit(run, "resources.time=1", "requeue.signal_lead_s=10", "trainer.steps=1000000",
                     "environment.HPCORCH_REQUEUE_HOLD=keep")
    job_id = job["job_id"]
    wait_progress(run, 5)
    ctx.slurm.wait_for(job_id, {"PENDING", "REQUEUED"}, timeout_s=150, poll_s=1)
    _second_writers_are_refused(ctx, run, job, "Slurm starts it again by itself")
    assert "Slurm starts it again" in ctx.entry(job_id)["next"]
    budget = json.loads((run / "restarts.json").read_text())
    assert budget["timeout"] == 1 and budget["preemption"] == 0
    stopped = json.loads((run / "progress.json").read_text())["step"]
    ckpts = sorted(p.parent.name for p in (run / "checkpoints").glob("step_*/COMMITTED"))
    assert ckpts[-1] == f"step_{stopped:09d}"  # the signal's checkpoint: nothing lost
    # Let the resumed run finish soon: train 10 more steps, under a longer limit.
    job_yaml = yaml.safe_load((run / "job.yaml").read_text())
    job_yaml["trainer"]["steps"] = stopped + 10
    (run / "job.yaml").write_text(yaml.safe_dump(job_yaml))
    _accept_config_change(run, f"trainer.steps: 1000000 -> {stopped + 10}")
    ctx.slurm.update_job(job_id, TimeLimit="5")
    _finish(ctx, job_id)
    got = _summary(run)
    assert got["final_step"] == stopped + 10 and got["steps_recomputed"] == 0


def test_failed_job_resumes_without_the_failed_node(ctx, tmp_path, reference):
    from hpcorch.spec.units import expand_hostlist

    run = tmp_path / "run"
    job = ctx.submit(run, "requeue.enabled=false")
    wait_progress(run, 40)
    victim = expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])[0]
    ctx.slurm.set_node(victim, "DOWN", reason="test-node-failure")
    assert ctx.slurm.wait_for(job["job_id"], {"NODE_FAIL", "FAILED", "CANCELLED"}, timeout_s=120) == "NODE_FAIL"
    out = ctx.cli("resume", job["key"])
    assert "submitted job" in out.stderr
    resumed = ctx.entry(str(run))  # newest registry entry for this run dir
    assert resumed["job_id"] != job["job_id"]
    _finish(ctx, resumed["job_id"])
    info = ctx.slurm.job(resumed["job_id"])
    assert victim not in expand_hostlist(info["NodeList"])
    assert expand_hostlist(info["ExcNodeList"]) == [victim]
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"]
    assert 0 <= got["steps_recomputed"] <= 25


def test_cancelled_job_checkpoints_and_resumes(ctx, tmp_path, reference):
    """Also: the resume renders with the user's template folder the job was submitted with."""
    run, templates = tmp_path / "run", tmp_path / "site-templates"
    templates.mkdir()
    (templates / "sbatch.sh.j2").write_text("{% extends 'sbatch.sh.j2' %}\n{% block header %}"
                                           "{{ super() }}#SBATCH --comment=site-template\n{% endblock %}\n")
    ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", run, *_sets(), "--template-dir", templates)
    job = ctx.entry(str(run))
    assert ctx.slurm.job(job["job_id"])["Comment"] == "site-template"
    wait_progress(run, 40)
    ctx.cli("cancel", job["key"])
    assert ctx.slurm.wait_for(job["job_id"], "CANCELLED", timeout_s=120) == "CANCELLED"
    ctx.cli("resume", job["key"])
    resumed = ctx.entry(str(run))
    assert ctx.slurm.job(resumed["job_id"])["Comment"] == "site-template"
    _finish(ctx, resumed["job_id"])
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"]
    assert got["steps_recomputed"] == 0  # SIGTERM from scancel: checkpoint at the step boundary


def test_ls_and_status_json(ctx, tmp_path):
    run = tmp_path / "run"
    job = ctx.submit(run, "trainer.steps=20")
    _finish(ctx, job["job_id"])
    rows = json.loads(ctx.cli("ls", "--json").stdout)
    assert [r["state"] for r in rows if r["job_id"] == job["job_id"]] == ["COMPLETED"]
    info = ctx.entry(str(job["key"]))
    assert info["state"] == "COMPLETED"
    assert info["latest_checkpoint"] == 20 and info["step"] == 20 and info["loss"] > 0
    assert info["tokens_per_s"] > 0 and info["restarts"] == 0
    assert info["next"] is None  # completed: nothing to do
    rank3 = ctx.cli("-v", "logs", str(job["key"]), "--rank", "3").stdout
    assert "global_rank=3(4)" in rank3 and "Job completed successfully" in rank3
    quiet = ctx.cli("logs", str(job["key"]), "--rank", "3").stdout
    assert "submitit INFO" not in quiet and "submitit INFO" in rank3
    refused = ctx.cli("resume", job["key"], expect=2).stderr
    assert "completed; nothing to resume" in refused


def test_sbatch_rejection_is_one_line_and_leaves_nothing(ctx, tmp_path, repo):
    """The live cluster refuses what the profile allows (a partition Slurm does not have)."""
    profile = (repo / "cluster_profiles/devcluster.yaml").read_text().replace(
        "partitions:\n", "partitions:\n  - name: ghost\n    nodes: node[1-2]\n    node_type: emu-a\n", 1)
    (tmp_path / "ghost.yaml").write_text(profile)
    run = tmp_path / "run"
    out = ctx.cli("submit", "gpt-tiny", "-p", tmp_path / "ghost.yaml", "--run-dir", run,
                  "--set", "resources.partition=ghost", expect=2)
    assert out.stderr.startswith("error: sbatch rejected the job: ") and "partition" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not run.exists()
    assert json.loads(ctx.cli("ls", "--json").stdout) == []



def test_tp_inside_nodes_dp_across_matches_a_local_run(ctx, tmp_path):
    """Issue 10: jobs/gpt-tp-dp.yaml (tp 2 inside each of 2 nodes, FSDP across them) completes
    on the dev cluster with the same losses and weights as `hpcorch train` of the same layout
    on one machine."""
    sets = _sets()  # the tiny model (2 heads: tp 2 takes one each) on 2 nodes x 2 ranks
    local = tmp_path / "local"
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "train", "jobs/gpt-tp-dp.yaml", "--nproc", "4",
                          "--run-dir", str(local), *sets], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    plan = json.loads(ctx.cli("plan", "jobs/gpt-tp-dp.yaml", "-p", "devcluster", *sets, "--json").stdout)
    assert plan["layout"]["sizes"] == {"pp": 1, "dp_replicate": 1, "dp_shard": 2, "tp": 2}
    assert [n["tp"] for n in plan["layout"]["nodes"]] == [[0, 1], [0, 1]]  # each tp pair on one node
    run = tmp_path / "run"
    ctx.cli("submit", "jobs/gpt-tp-dp.yaml", "-p", "devcluster", "--run-dir", run, *sets)
    job = ctx.entry(run)
    _finish(ctx, job["job_id"])
    got, want = _summary(run), _summary(local)
    assert got["world_size"] == 4 and got["final_step"] == want["final_step"]
    assert got["weights_sha256"] == want["weights_sha256"]
    assert losses(run) == losses(local)
