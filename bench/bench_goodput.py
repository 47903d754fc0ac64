"""On the dev cluster (hpcorch devcluster up): goodput of a scripted run with 2 preemptions,
1 node failure and 1 time limit, with and without the requeue-hold cut.

The job: the tiny GPT on 2 nodes x 2 ranks with 2 emulated GPUs per node (AllocTRES has
gres/gpu=4), each step slowed to ~0.1 s (HPCORCH_STEP_DELAY_S, counted as step time: a slower
machine), a 3-minute time limit per attempt (a USR2 with more than signal_lead_s + 60 s left
counts as a preemption). Script, per attempt:
  1. ``--preempt-after`` s after its first step: USR2 to the ranks (a preemption's signal);
  2. the same again;
  3. the same delay, then the ranks of one node SIGKILLed and that node set DOWN 2 s later
     (a hard node failure: the steps since the last checkpoint are lost);
  4. nothing: Slurm's time limit signals it (signal_lead_s 10), it checkpoints and requeues;
  5. it completes.
Variant ``cut``: hpcorch's requeues (protocol and recovery) lift Slurm's ~120 s BeginTime hold;
``keep``: HPCORCH_REQUEUE_HOLD=keep leaves it. The bench never lifts a hold itself.

Figures come from hpcorch.observe.goodput (sacct -D + the run directory): goodput = productive /
allocated (queue wait excluded), the buckets, queue wait, productive / (allocated + queue wait),
and per restart the time from the committed checkpoint to the next first step.

Usage: python bench/bench_goodput.py [--variants cut,keep] [--preempt-after 40] [--steps 2700]
       [--out bench/results-goodput.md]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpcorch.cluster.slurm import Slurm  # noqa: E402
from hpcorch.util.poll import poll_until  # noqa: E402

MODEL = ["trainer.model.layers=1", "trainer.model.width=32", "trainer.model.heads=2", "trainer.model.seq_len=32",
         "trainer.global_batch=8", "trainer.micro_batch=2", "trainer.optimizer.warmup_steps=4",
         "trainer.data.max_bytes=400000", "trainer.eval_interval=500", "trainer.log_interval=500",
         "trainer.collective_timeout_s=60"]
CLUSTER = ["resources.nodes=2", "resources.tasks_per_node=2", "resources.gpus_per_node=2",
           "requeue.signal_lead_s=10", "trainer.checkpoint.interval=100", "environment.HPCORCH_STEP_DELAY_S=0.1"]


def hpcorch(home: Path, *args: str, timeout: float = 120) -> str:
    env = {**os.environ, "HPCORCH_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"hpcorch {' '.join(args[:2])}: {out.stderr.strip()}")
    return out.stdout


def events(run: Path, name: str) -> list[dict]:
    try:
        lines = (run / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == name:
            found.append(e)
    return found


def wait_first_step(run: Path, n: int, timeout_s: float = 400) -> float:
    """The time of the ``n``-th first_step event (the n-th attempt trains)."""
    return poll_until(lambda: (lambda f: f[n - 1]["time"] if len(f) >= n else None)(events(run, "first_step")),
                      timeout_s, interval_s=0.5, what=f"first step of attempt {n}")


def kill_node(slurm: Slurm, job_id: str) -> str:
    """SIGKILL the training ranks on the job's last node, then set that node DOWN."""
    import psutil

    from hpcorch.spec.units import expand_hostlist

    victim = expand_hostlist(slurm.job(job_id)["NodeList"])[-1]
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == victim \
                    and "submitit.core._submit" in " ".join(proc.cmdline()):
                os.kill(proc.pid, signal.SIGKILL)
        except psutil.Error:
            continue
    time.sleep(2)
    slurm.run("scontrol", "update", f"NodeName={victim}", "State=DOWN", "Reason=bench-goodput")
    return victim


def resume_node(slurm: Slurm, node: str) -> None:
    def settled():
        state = slurm.show("node", node).get("State", "")
        return None if "COMPLETING" in state else state

    poll_until(settled, 120, interval_s=1, what=f"{node} settled")
    slurm.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)


def run_variant(variant: str, work: Path, preempt_after: float, steps: int, time_min: int = 3) -> dict:
    slurm = Slurm()
    home, run = work / f"home-{variant}", work / f"run-{variant}"
    sets = MODEL + CLUSTER + [f"trainer.steps={steps}", f"resources.time={time_min}"]
    if variant == "keep":
        sets.append("environment.HPCORCH_REQUEUE_HOLD=keep")
    args = [a for s in sets for a in ("--set", s)]
    hpcorch(home, "submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", str(run), *args)
    job_id = json.loads(hpcorch(home, "status", str(run), "--json"))["job_id"]
    print(f"[{variant}] job {job_id}", flush=True)
    victim = None
    try:
        for n, what in ((1, "preempt"), (2, "preempt"), (3, "node failure")):
            first = wait_first_step(run, n)
            time.sleep(max(0.0, first + preempt_after - time.time()))
            if what == "preempt":
                slurm.run("scancel", "--signal=USR2", job_id)
            else:
                victim = kill_node(slurm, job_id)
            print(f"[{variant}] attempt {n}: {what}", flush=True)
        wait_first_step(run, 4)
        print(f"[{variant}] attempt 4: left to its time limit", flush=True)

        def ended():
            state = slurm.state(job_id)
            return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None

        final = poll_until(ended, 900, interval_s=2, what=f"job {job_id} ended")
    finally:
        if slurm.state(job_id) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            slurm.cancel(job_id)
        if victim:
            resume_node(slurm, victim)
    return {"variant": variant, **account(slurm, job_id, final, run)}


def account(slurm: Slurm, job_id: str, final: str, run: Path) -> dict:
    """Goodput of the ended job ``job_id`` (its final state ``final``) from sacct -D and ``run``."""
    from hpcorch.observe import goodput as gp

    rows = poll_until(lambda: (lambda r: r if r and r[-1]["State"] == final else None)(
        slurm.attempts([job_id])[job_id]), 120, interval_s=1, what="accounting")
    log = gp.RunLog.read(gp.RunDir.open(run))
    g = gp.summarize("sacct", gp.with_world_sizes(gp.sacct_attempts(rows), gp.RunDir.open(run)), log)
    budget = json.loads((run / "restarts.json").read_text())
    return {"job_id": job_id, "final": final, "states": [r["State"] for r in rows],
            "goodput": g.as_dict(), "allocated_s": g.allocated_s, "restart_gaps_s": g.restart_gaps_s,
            "queue_waits_s": [a.queue_wait_s for a in g.attempts],
            "requeues": {k: budget.get(k, 0) for k in ("preemption", "node_failure", "timeout")}}


def report(results: list[dict]) -> str:
    lines = ["| | " + " | ".join(r["variant"] for r in results) + " |", "|---|" + "---:|" * len(results)]

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(r) for r in results) + " |")

    row("Slurm job / runs", lambda r: f"{r['job_id']} / {len(r['states'])} ({', '.join(r['states'])})")
    row("requeues (preemption, node failure, timeout)", lambda r: ", ".join(str(v) for v in r["requeues"].values()))
    row("allocated GPU-hours", lambda r: f"{r['goodput']['allocated_hours']:.4f}")
    row("allocated wall s", lambda r: f"{r['allocated_s']:.0f}")
    row("**goodput** (productive / allocated)", lambda r: f"**{r['goodput']['goodput'] * 100:.1f} %**")
    for key in ("productive", "startup", "recomputed", "checkpoint", "eval", "idle_after_signal", "other"):
        row(f"  {key} s", lambda r, k=key: f"{r['goodput']['buckets_s'][k]:.1f} "
            f"({r['goodput']['buckets_s'][k] / r['allocated_s'] * 100:.1f} %)")
    row("steps recomputed", lambda r: str(r["goodput"]["steps_recomputed"]))
    row("queue wait s (all restarts)", lambda r: f"{r['goodput']['queue_wait_s']:.0f}")
    row("queue wait per attempt s", lambda r: ", ".join(f"{w:.0f}" for w in r["queue_waits_s"]))
    def productive_of_wall(r) -> float:
        return r["goodput"]["buckets_s"]["productive"] / (r["allocated_s"] + r["goodput"]["queue_wait_s"]) * 100
    row("productive / (allocated + queue wait)", lambda r: f"{productive_of_wall(r):.1f} %")
    row("committed checkpoint -> next first step s (per restart)",
        lambda r: ", ".join(f"{g:.0f}" for g in r["restart_gaps_s"]))
    row("  mean s", lambda r: f"{sum(r['restart_gaps_s']) / max(1, len(r['restart_gaps_s'])):.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="cut,keep")
    parser.add_argument("--preempt-after", type=float, default=40.0, help="seconds of training per scripted attempt")
    parser.add_argument("--steps", type=int, default=2700)
    parser.add_argument("--time-min", type=int, default=3,
                        help="each attempt's time limit (minutes); a USR2 with less than signal_lead_s + 60 s "
                             "left counts as the time limit, so keep preempt-after + start-up below it by that")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    results = run_variants("bench-goodput-", args.variants, lambda variant, tmp: run_variant(
        variant, tmp, args.preempt_after, args.steps, args.time_min))
    publish(report(results), results, args.out)


def run_variants(prefix: str, variants: str, run: Callable[[str, Path], dict]) -> list[dict]:
    """Run each of the comma-separated ``variants`` on the dev cluster (``run(variant, tmp)``)
    in one temporary folder; their results in order."""
    os.environ.setdefault("SLURM_CONF", "/tmp/hpcorch-devcluster/etc/slurm.conf")
    results = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for variant in variants.split(","):
            start = time.time()
            results.append(run(variant, Path(tmp)))
            print(f"[{variant}] {time.time() - start:.0f} s of bench", flush=True)
    return results


def publish(table: str, results: list[dict], out: Path | None) -> None:
    """Print the markdown ``table`` and the raw ``results``; also write the table to ``out``."""
    print(table)
    print(json.dumps(results, indent=1))
    if out:
        out.write_text(table + "\n")


if __name__ == "__main__":
    main()
