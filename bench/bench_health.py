"""On the dev cluster (hpcorch devcluster up): what the pre-flight costs, and how fast a node
that fails it is left behind.

1. Healthy pre-flight: tiny 2-node jobs with the pre-flight on and off (measured in this run);
   per node, the report's own wall time; per job, job start (sacct) -> first training step
   (events.jsonl), so the pre-flight's share of the start-up is a ratio of two measurements.
2. Failed pre-flight: node1's emulated InfiniBand port says DOWN; from the failing node's report
   (its check ended) -> the requeued attempt's first training step on other nodes (recovery,
   requeue without the node, Slurm's restart, the second pre-flight, the ranks' start-up).

Usage: python bench/bench_health.py [--repeat N]
"""
from __future__ import annotations

import argparse
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

SETS = ["resources.nodes=2", "resources.tasks_per_node=2", "trainer.micro_batch=2", "trainer.steps=20",
        "trainer.checkpoint.interval=20", "trainer.log_interval=100", "trainer.model.layers=1",
        "trainer.model.width=32", "trainer.model.heads=2", "trainer.model.seq_len=32", "trainer.global_batch=8",
        "trainer.data.max_bytes=400000"]


def hpcorch(home: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HPCORCH_HOME": str(home)}, cwd=REPO)
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    return out.stdout


def run_job(home: Path, run: Path, *extra: str) -> str:
    from hpcorch.cluster.slurm import Slurm
    from hpcorch.util.poll import poll_until

    sets = [a for s in SETS + list(extra) for a in ("--set", s)]
    hpcorch(home, "submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", str(run), *sets)
    job_id = json.loads((run / "lease.json").read_text())["job_id"] if (run / "lease.json").exists() else \
        json.loads(hpcorch(home, "status", str(run), "--json"))["job_id"]
    poll_until(lambda: Slurm().state(job_id) in ("COMPLETED", "FAILED", "CANCELLED") or None, 300, interval_s=0.5)
    return job_id


def events(run: Path, name: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if e["event"] == name]


def job_starts(job_id: str) -> list[float]:
    """Each attempt's start time (sacct, epoch seconds)."""
    from hpcorch.cluster.slurm import Slurm

    out = Slurm().run("sacct", "-j", job_id, "-D", "-X", "-n", "-P", "-o", "Start")
    return [time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%S")) for s in out.split() if s[:1].isdigit()]


def reports(run: Path, attempt: int) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "health" / f"attempt-{attempt}").glob("*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-health-"))
    home = root / "home"
    walls, with_pf, without_pf = [], [], []
    for i in range(args.repeat):
        for on, bucket in ((True, with_pf), (False, without_pf)):
            run = root / f"run-{i}-{on}"
            job_id = run_job(home, run, f"health.preflight={str(on).lower()}")
            bucket.append(events(run, "first_step")[0]["time"] - job_starts(job_id)[0])
            if on:
                walls += [r["wall_s"] for r in reports(run, 0)]
    pf, base = statistics.median(with_pf), statistics.median(without_pf)
    print(f"pre-flight wall per node (healthy, 2 nodes, {len(walls)} reports): "
          f"median {statistics.median(walls):.2f} s, max {max(walls):.2f} s")
    print(f"job start -> first step: {pf:.1f} s with pre-flight, {base:.1f} s without "
          f"(ratio {pf / base:.2f}; pre-flight share of start-up {(pf - base) / pf:.0%})")

    from hpcorch.cluster.devcluster import DevCluster

    state = DevCluster("devcluster").local.state_dir / "nodes" / "node1" / "sys/class/infiniband/mlx5_0/ports/1/state"
    saved = state.read_text()
    state.write_text("1: DOWN\n")
    try:
        run = root / "run-fault"
        run_job(home, run)
        failed = next(r for r in reports(run, 0) if not r["ok"])
        ended = failed["started"] + failed["wall_s"]
        first = events(run, "first_step")[-1]["time"]
        print(f"failed pre-flight on {failed['node']} -> requeued attempt's first step: {first - ended:.1f} s "
              f"(without the BeginTime cut Slurm holds a requeued job ~120 s)")
    finally:
        state.write_text(saved)
        hpcorch(home, "nodes", "clear", "node1")


if __name__ == "__main__":
    main()
