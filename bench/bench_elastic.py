"""On the dev cluster (hpcorch devcluster up): a node fails under a job; a node range goes on at
once on the nodes left, a fixed node count waits for a replacement node.

The dev cluster has 4 nodes, so the scripted run is one size down from the issue's "4 nodes,
finish on 3": node4 is held busy by another job (a blocker), the training job starts on
node[1-3], and once it has trained ``--fail-after`` s the ranks of its last node are SIGKILLed
and the node set DOWN 2 s later (bench_goodput.kill_node). Variants:
  * ``range``: ``resources.nodes: 2-3``; the requeue (without the failed node) starts on the 2
    nodes left;
  * ``fixed``: ``resources.nodes: 3``; the requeue waits for a third node, which frees when
    the blocker is cancelled ``--replacement-after`` s after the failure (a busy cluster's wait:
    the figure scales with it).
Both keep ``global_batch`` 12 (accumulation 4 on 3 ranks, 6 on 2), so they train the same
samples. Figures: time from the failure to the first step on the next allocation, wall time
from submission to the end, and hpcorch.observe.goodput's buckets (productive / allocated and
productive / (allocated + queue wait)).

Usage: python bench/bench_elastic.py [--variants range,fixed] [--steps 400] [--fail-after 40]
       [--replacement-after 60] [--out bench/results-elastic.md]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_goodput import (  # noqa: E402
    account,
    hpcorch,
    kill_node,
    publish,
    report,
    resume_node,
    run_variants,
    wait_first_step,
)

from hpcorch.cluster.slurm import Slurm  # noqa: E402
from hpcorch.util.poll import poll_until  # noqa: E402

MODEL = ["trainer.model.layers=1", "trainer.model.width=32", "trainer.model.heads=2", "trainer.model.seq_len=32",
         "trainer.global_batch=12", "trainer.micro_batch=1", "trainer.optimizer.warmup_steps=4",
         "trainer.data.max_bytes=400000", "trainer.eval_interval=0", "trainer.log_interval=500",
         "trainer.collective_timeout_s=60", "trainer.checkpoint.interval=50"]
CLUSTER = ["resources.tasks_per_node=1", "placement.switches=off", "environment.HPCORCH_STEP_DELAY_S=0.1"]
NODES = {"range": "2-3", "fixed": "3"}
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def run_variant(variant: str, work: Path, steps: int, fail_after: float, replacement_after: float) -> dict:
    slurm = Slurm()
    home, run = work / f"home-{variant}", work / f"run-{variant}"
    blocker = slurm.run("sbatch", "--parsable", "-w", "node4", "--exclusive", "-J", "bench-blocker", "-o", "/dev/null",
                        "--wrap", "sleep 3000").strip().split(";")[0]
    poll_until(lambda: slurm.state(blocker) == "RUNNING" or None, 60, interval_s=0.5, what="blocker running")
    sets = MODEL + CLUSTER + [f"trainer.steps={steps}", f"resources.nodes={NODES[variant]}"]
    submitted = time.time()
    hpcorch(home, "submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", str(run),
            *[a for s in sets for a in ("--set", s)])
    job_id = json.loads(hpcorch(home, "status", str(run), "--json"))["job_id"]
    print(f"[{variant}] job {job_id}", flush=True)
    victim = None
    try:
        first = wait_first_step(run, 1)
        time.sleep(max(0.0, first + fail_after - time.time()))
        failed_at = time.time()
        victim = kill_node(slurm, job_id)
        print(f"[{variant}] {victim} failed", flush=True)
        if variant == "fixed":  # a node frees up later elsewhere on a busy cluster
            time.sleep(max(0.0, failed_at + replacement_after - time.time()))
            slurm.cancel(blocker)
        resumed = wait_first_step(run, 2, timeout_s=600)
        nodes = slurm.job(job_id).get("NodeList", "")
        print(f"[{variant}] first step on {nodes} {resumed - failed_at:.1f} s after the failure", flush=True)
        final = poll_until(lambda: (lambda s: s if s in ENDED else None)(slurm.state(job_id)), 900,
                           interval_s=2, what=f"job {job_id} ended")
        ended = time.time()
    finally:
        for job in (job_id, blocker):
            if slurm.state(job) not in ENDED:
                slurm.cancel(job)
        if victim:
            resume_node(slurm, victim)
    return {"variant": variant, **account(slurm, job_id, final, run), "failure_to_step_s": resumed - failed_at,
            "nodes_after": nodes, "wall_s": ended - submitted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="range,fixed")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--fail-after", type=float, default=40.0, help="seconds of training before the failure")
    parser.add_argument("--replacement-after", type=float, default=60.0,
                        help="fixed: seconds after the failure until a third node frees up")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    results = run_variants("bench-elastic-", args.variants, lambda variant, tmp: run_variant(
        variant, tmp, args.steps, args.fail_after, args.replacement_after))
    lines = [report(results), "| nodes after the failure | " + " | ".join(r["nodes_after"] for r in results) + " |",
             "| **failure -> first step on the next allocation s** | "
             + " | ".join(f"**{r['failure_to_step_s']:.1f}**" for r in results) + " |",
             "| wall s, submission to end | " + " | ".join(f"{r['wall_s']:.0f}" for r in results) + " |"]
    publish("\n".join(lines), results, args.out)


if __name__ == "__main__":
    main()
