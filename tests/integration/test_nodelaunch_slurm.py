"""The Slurm training step with a node launcher (HPCORCH_NODE_LAUNCHER=1 when planning) on the
real dev cluster: one task per node imports torch once and forks the node's ranks; each rank
keeps its per-rank log and result pickle, the run ends with the same weights as per-rank
interpreters (HPCORCH_FORK_RANKS=0 in the job's environment) and as a local run, and ranks
SIGKILLed on one node requeue the job without that node as before."""
import json
import os
import signal

import psutil
import pytest
from slurmhelp import wait_progress
from test_submit import _finish, _summary, ctx, reference  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]


def _step_processes(job_id: str) -> dict[str, dict[int, psutil.Process]]:
    """The training step's processes of ``job_id`` per emulated node (every emulated node is this
    machine: told apart by the environment Slurm gave them), by pid."""
    nodes: dict[str, dict[int, psutil.Process]] = {}
    for proc in psutil.process_iter():
        try:
            env, cmd = proc.environ(), " ".join(proc.cmdline())
            if (env.get("SLURM_JOB_ID") == job_id and "srun" not in proc.cmdline()[0]
                    and ("hpcorch.batch.nodelaunch" in cmd or "submitit.core._submit" in cmd)):
                nodes.setdefault(env["SLURMD_NODENAME"], {})[proc.pid] = proc
        except (psutil.Error, IndexError, KeyError):
            continue
    return nodes


def _launchers_and_ranks(job_id: str) -> dict[str, tuple[int, list[int]]]:
    """Per node: the one node launcher and the ranks it started (its children)."""
    out = {}
    for node, procs in _step_processes(job_id).items():
        launchers = [p for p in procs.values() if "hpcorch.batch.nodelaunch" in " ".join(p.cmdline())
                     and p.ppid() not in procs]
        assert len(launchers) == 1, (node, [(p.pid, p.ppid(), p.cmdline()) for p in procs.values()])
        ranks = [p.pid for p in procs.values() if p.ppid() == launchers[0].pid]
        out[node] = (launchers[0].pid, ranks)
    return out


def _check_rank_files(run, job_id: str) -> None:
    folder = run / "submitit" / job_id
    for rank in range(4):
        for name in (f"{job_id}_{rank}_log.out", f"{job_id}_{rank}_log.err", f"{job_id}_{rank}_result.pkl"):
            assert (folder / name).is_file(), (name, sorted(p.name for p in folder.iterdir()))
    assert "Starting with JobEnvironment" in (folder / f"{job_id}_3_log.out").read_text()


@pytest.mark.parametrize("fork", ["1", "0"], ids=["forked", "one-interpreter-per-rank"])
def test_one_launcher_per_node_starts_its_ranks_and_the_run_matches(ctx, tmp_path, reference, monkeypatch, fork):
    monkeypatch.setenv("HPCORCH_NODE_LAUNCHER", "1")
    monkeypatch.setenv("HPCORCH_FORK_RANKS", fork)  # the job's environment (sbatch exports it)
    run = tmp_path / "run"
    job = ctx.submit(run)
    wait_progress(run, 5)
    seen = _launchers_and_ranks(job["job_id"])
    assert len(seen) == 2 and all(len(ranks) == 2 for _, ranks in seen.values()), seen
    for launcher, ranks in seen.values():
        # Each rank shows as submitit's task (a forked one retitles itself). Its /proc environ is
        # the one it was started with: a forked rank's is its launcher's, an exec'd one's its own.
        assert all("submitit.core._submit" in " ".join(psutil.Process(pid).cmdline()) for pid in ranks)
        # (SLURM_GTIDS: the launcher's task alone, or the node's ranks "2,3" as the launcher set them)
        task = psutil.Process(launcher).environ()["SLURM_GTIDS"]
        assert all((psutil.Process(pid).environ()["SLURM_GTIDS"] == task) == (fork == "1") for pid in ranks)
    _finish(ctx, job["job_id"], timeout_s=300)
    # Bit-identical to per-rank interpreters: the local run of the same world size (and each
    # variant here to the other, through it).
    assert _summary(run)["weights_sha256"] == reference["weights_sha256"]
    _check_rank_files(run, job["job_id"])


def test_ranks_killed_on_a_node_requeue_the_job_without_it(ctx, tmp_path, reference, monkeypatch):
    from hpcorch.spec.units import expand_hostlist

    monkeypatch.setenv("HPCORCH_NODE_LAUNCHER", "1")
    monkeypatch.setenv("HPCORCH_STEP_DELAY_S", "0.05")
    run = tmp_path / "run"
    job = ctx.submit(run)
    wait_progress(run, 35)
    victim = expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])[-1]
    _, ranks = _launchers_and_ranks(job["job_id"])[victim]
    assert len(ranks) == 2
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    _finish(ctx, job["job_id"], timeout_s=300)
    assert victim not in expand_hostlist(ctx.slurm.job(job["job_id"])["NodeList"])
    got = _summary(run)
    assert got["weights_sha256"] == reference["weights_sha256"] and got["restarts"] == 1
    failures = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    assert [f["nodes"] for f in failures] == [[victim]] and failures[0]["evidence"] == "hard", failures
    ctx.cli("nodes", "clear", victim)
