"""On the dev cluster (hpcorch devcluster up): the cost of `hpcorch submit` against plain submitit
and raw sbatch, and how fast a preempted run checkpoints and comes back.

1. Submission latency, each measured in this run and cancelled at once:
   raw `sbatch` of the rendered script; plain submitit submitting the same training task;
   hpcorch's service.submit in-process; the whole `hpcorch submit` CLI process.
2. Preemption: a 2-node tiny training job is preempted by an `urgent` job; from its
   events.jsonl: signal -> committed checkpoint (against the same checkpoint's plain save time)
   and process start -> first training step after the restart (against `python -c "import torch"`).

Usage: python bench/bench_submit.py [--repeat N]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETS = ["resources.nodes=2", "resources.tasks_per_node=2", "trainer.micro_batch=4", "trainer.steps=400",
        "trainer.checkpoint.interval=100", "trainer.log_interval=100"]


def median_time(fn, repeat):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import submitit

    from hpcorch.cluster.devcluster import DevCluster
    from hpcorch.plan.plan import make_plan
    from hpcorch.render.sbatch import render_sbatch
    from hpcorch.spec.job import load_job
    from hpcorch.spec.profile import load_profile
    from hpcorch.state.registry import Registry
    sys.path.insert(0, str(REPO / "tests"))
    from slurmhelp import TestSlurm as Slurm  # sbatch, wait_for, update_job: a tester's tools

    from hpcorch import service
    from hpcorch.batch.task import TrainTask

    cluster = DevCluster()
    if not cluster.is_up():
        sys.exit("start the dev cluster first: hpcorch devcluster up")
    conf = str(cluster.etc / "slurm.conf")
    os.environ["SLURM_CONF"] = conf
    os.environ["HPCORCH_HOME"] = tempfile.mkdtemp(prefix="hpcorch-bench-home-")
    slurm = Slurm()
    tmp = Path(tempfile.mkdtemp(prefix="hpcorch-bench-", dir="/tmp"))
    job = load_job(REPO / "jobs/gpt-tiny.yaml", SETS)
    plan = make_plan(job, load_profile("devcluster"), run_dir=tmp / "run")
    script = render_sbatch(plan)
    submitted = []

    def raw_sbatch():
        submitted.append(slurm.sbatch(script))

    def plain_submitit():
        ex = submitit.AutoExecutor(folder=tmp / "plain" / "%j", cluster="slurm")
        ex.update_parameters(nodes=2, tasks_per_node=2, timeout_min=15, slurm_partition="batch",
                             slurm_additional_parameters={"requeue": True})
        submitted.append(ex.submit(TrainTask(str(tmp / "job.yaml"), str(tmp / "plainrun"), "slurm")).job_id)

    fresh = itertools.count()  # one run directory per submission: a live job holds its directory's lease

    def hpcorch_api():
        each = service.plan(REPO / "jobs/gpt-tiny.yaml", "devcluster", SETS, run_dir=tmp / f"api{next(fresh)}")
        submitted.append(service.submit(each, script).entry.job_id)

    def hpcorch_cli():
        sets = [a for s in SETS for a in ("--set", s)]
        subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "submit", "jobs/gpt-tiny.yaml", "-p", "devcluster",
                        "--run-dir", str(tmp / f"cli{next(fresh)}"), *sets], cwd=REPO, check=True,
                       capture_output=True)
        submitted.append(Registry().all()[-1].job_id)

    times = {}
    try:
        for name, fn in [("raw sbatch", raw_sbatch), ("plain submitit", plain_submitit),
                         ("hpcorch service.submit", hpcorch_api), ("hpcorch submit (CLI)", hpcorch_cli)]:
            times[name] = median_time(fn, args.repeat)
            for job_id in submitted:
                slurm.cancel(job_id)
            submitted.clear()
    finally:
        for job_id in submitted:
            slurm.cancel(job_id)
    base = times["raw sbatch"]
    print(f"{'submission':<24}{'median s':>10}{'x sbatch':>10}{'x submitit':>12}")
    for name, t in times.items():
        print(f"{name:<24}{t:>10.3f}{t / base:>10.2f}{t / times['plain submitit']:>12.2f}")
    time.sleep(3)
    preemption(plan, script, slurm, tmp)


def preemption(plan, script, slurm, tmp) -> None:
    from hpcorch import service
    from hpcorch.state.rundir import RunDir
    from hpcorch.util.poll import poll_until

    run = plan.run_dir
    entry = service.submit(plan, script).entry
    poll_until(lambda: RunDir(run).progress().get("step", 0) >= 120 or None, 600, interval_s=0.1)
    urgent = slurm.sbatch("#!/bin/bash\nsleep 1\n", "--partition=urgent", "--nodes=4", "--exclusive", "--time=2",
                          f"--output={tmp}/urgent.out")
    slurm.wait_for(urgent, "COMPLETED", timeout_s=180)

    def completed():
        state = slurm.state(entry.job_id)
        if state == "PENDING":  # requeued: start now instead of after BeginTime
            slurm.update_job(entry.job_id, StartTime="now")
        return state == "COMPLETED" or None

    poll_until(completed, 300, interval_s=0.5, what=f"job {entry.job_id} COMPLETED")
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    signal_t = next(e["time"] for e in events if e["event"] == "signal")
    commit = next(e for e in events if e["event"] == "checkpoint_committed")
    starts = [e for e in events if e["event"] == "process_start"]
    firsts = [e for e in events if e["event"] == "first_step"]
    from hpcorch.train.checkpoint.store import CheckpointStore

    ck = CheckpointStore(run / "checkpoints", 0, 1)
    step = ck.committed_steps()[-1]
    shared, local, _ = ck.load(step)
    probe = CheckpointStore(tmp / "probe", 0, 1)
    save_s = median_time(lambda: probe.save(int(time.time() * 1000), shared, local, {}), 3)
    torch_s = median_time(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True), 3)
    to_commit = commit["time"] - signal_t
    restart = firsts[-1]["time"] - starts[-1]["time"]
    restarts = json.loads((run / "summary.json").read_text())["restarts"]
    print(f"\npreempted at step {commit['step']}, summary: {restarts} restart(s)")
    print(f"{'preemption':<34}{'seconds':>9}{'baseline s':>12}{'ratio':>8}")
    print(f"{'signal -> committed checkpoint':<34}{to_commit:>9.3f}{save_s:>12.3f}{to_commit / save_s:>8.2f}"
          "   (baseline: the same checkpoint's plain save)")
    print(f"{'restart -> first step':<34}{restart:>9.3f}{torch_s:>12.3f}{restart / torch_s:>8.2f}"
          "   (baseline: python -c 'import torch')")


if __name__ == "__main__":
    main()
