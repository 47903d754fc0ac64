"""On the dev cluster (hpcorch devcluster up): a Slurm attempt's start, per-rank srun tasks
against the node launcher, in the same run.

    SLURM_CONF=/tmp/hpcorch-devcluster/etc/slurm.conf python bench/bench_slurm_startup.py [--ranks 4] [--repeat 3]

The job: gpt-tiny on 1 node x N ranks, 2 steps, submitted through ``hpcorch submit -p devcluster``
in three variants, alternating, each repetition also timing one fresh ``python -c "import torch"``
(so load from other work falls on all alike):

- ``per-task``: today's training step, one srun task (interpreter) per rank;
- ``launcher``: ``HPCORCH_NODE_LAUNCHER=1``: one task per node imports torch once and forks the ranks;
- ``launcher, FORK_RANKS=0``: the node launcher starting one interpreter per rank (its fallback).

Per variant: rank 0's ``startup_s`` (its process start, a forked rank's being its launcher's, to
its first step; see hpcorch/train/startup.py) and that over the median ``import torch``, and
the attempt's start (sacct, whole seconds) to the first step, which adds the pre-flight step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_startup import import_torch  # noqa: E402

from hpcorch.cluster.slurm import Slurm  # noqa: E402
from hpcorch.util.fileio import json_lines  # noqa: E402
from hpcorch.util.poll import poll_until  # noqa: E402

SETS = ["trainer.micro_batch=4", "trainer.eval_interval=0", "trainer.checkpoint.interval=2", "trainer.steps=2",
        "resources.nodes=1"]
VARIANTS = {"per-task": {"HPCORCH_NODE_LAUNCHER": "0"},
            "launcher": {"HPCORCH_NODE_LAUNCHER": "1"},
            "launcher, FORK_RANKS=0": {"HPCORCH_NODE_LAUNCHER": "1", "HPCORCH_FORK_RANKS": "0"}}


def one(work: Path, ranks: int, env: dict[str, str]) -> dict[str, float]:
    """Submit one job, wait for it; rank 0's startup_s and the attempt start to first step."""
    slurm = Slurm()
    run = work / "run"
    sets = [a for s in SETS + [f"resources.tasks_per_node={ranks}", f"trainer.global_batch={4 * ranks}"]
            for a in ("--set", s)]
    full = {**os.environ, "HPCORCH_HOME": str(work / "home"), "PYTHONPATH": str(REPO), **env}
    cli = [sys.executable, "-m", "hpcorch.cli.main"]
    subprocess.run([*cli, "submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", str(run), *sets],
                   cwd=REPO, env=full, check=True, capture_output=True, timeout=120)
    status = subprocess.run([*cli, "status", str(run), "--json"], cwd=REPO, env=full, check=True,
                            capture_output=True, text=True, timeout=60)
    job_id = json.loads(status.stdout)["job_id"]
    try:
        poll_until(lambda: slurm.state(job_id) in ("COMPLETED", "FAILED", "CANCELLED") or None, 300,
                   interval_s=0.5, what=f"job {job_id} ends")
    finally:
        slurm.run("scancel", job_id, check=False)
    if slurm.state(job_id) != "COMPLETED":
        raise RuntimeError(f"job {job_id} ended {slurm.state(job_id)}; see {run}")
    events = list(json_lines(run / "events.jsonl"))
    start = [e for e in events if e.get("event") == "process_start"][-1]["time"]
    first = [e for e in events if e.get("event") == "first_step"][-1]["time"]
    out = slurm.run("sacct", "-n", "-P", "-X", "-o", "Start", "-j", job_id).split()
    attempt = datetime.fromisoformat(out[-1]).timestamp()
    return {"startup_s": first - start, "attempt_to_first_step_s": first - attempt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = [os.getloadavg()[0]]
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    torch_s = []
    for i in range(args.repeat):
        torch_s.append(import_torch())
        for name, env in VARIANTS.items():
            with tempfile.TemporaryDirectory(prefix="bench-slurm-startup-") as work:
                results[name].append(one(Path(work), args.ranks, env))
            print(f"repeat {i + 1}/{args.repeat} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
        load.append(os.getloadavg()[0])
    torch_median = statistics.median(torch_s)
    print(f"1 node x {args.ranks} ranks on the dev cluster, gpt-tiny, median of {args.repeat}, {os.cpu_count()} CPUs, "
          f"load average (1 min) {min(load):.2f}-{max(load):.2f}; `import torch` (fresh interpreter) "
          f"{torch_median:.2f} s ({', '.join(f'{t:.2f}' for t in torch_s)})\n")
    print("| variant | rank 0 startup_s | / import torch | attempt start to first step (s, sacct whole s) |\n"
          "|---|---:|---:|---:|")
    for name, rows in results.items():
        startup = statistics.median(r["startup_s"] for r in rows)
        attempt = statistics.median(r["attempt_to_first_step_s"] for r in rows)
        print(f"| {name} | {startup:.2f} | {startup / torch_median:.2f}x | {attempt:.1f} |")


if __name__ == "__main__":
    main()
