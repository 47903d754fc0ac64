"""On the dev cluster (hpcorch devcluster up): what a graceful node failure costs, from the
committed checkpoint to the next attempt's first step, for this checkout against a baseline
checkout (``--baseline DIR``, e.g. the main branch) in the same run.

The job: the tiny GPT on 2 nodes x 2 ranks, each step slowed to 0.05 s. At step 30 the job's
last node is set DOWN while its slurmd lives: Slurm SIGTERMs the ranks (they checkpoint) and
requeues the job itself. Per code and variant the bench reports the time from the signal to
the end of the training step, from the commit to the next attempt's start (both from sacct,
whole seconds) and from the commit to the next first step (which adds the pre-flight and the
ranks' start-up: on a loaded machine, most of it).
Variant ``hpcorch``: nothing but the job's own code lifts Slurm's ~120 s requeue hold;
``lifted``: the bench also lifts it (as the dev-cluster tests' helper does, 2 s after it
appears), which isolates what the ranks themselves cost.

Usage: python bench/bench_stops.py --baseline /work/main [--variants hpcorch,lifted]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpcorch.cluster.slurm import Slurm  # noqa: E402
from hpcorch.spec.units import expand_hostlist  # noqa: E402
from hpcorch.util.fileio import json_lines  # noqa: E402
from hpcorch.util.poll import poll_until  # noqa: E402

SETS = ["trainer.model.layers=1", "trainer.model.width=32", "trainer.model.heads=2", "trainer.model.seq_len=32",
        "trainer.global_batch=8", "trainer.micro_batch=2", "trainer.optimizer.warmup_steps=4",
        "trainer.data.max_bytes=400000", "trainer.eval_interval=0", "trainer.log_interval=100",
        "trainer.collective_timeout_s=60", "resources.nodes=2", "resources.tasks_per_node=2",
        "trainer.steps=150", "trainer.checkpoint.interval=25", "environment.HPCORCH_STEP_DELAY_S=0.05"]


def events(run: Path, name: str) -> list[dict]:
    return [e for e in json_lines(run / "events.jsonl") if e.get("event") == name]


def one(code: Path, variant: str, work: Path) -> dict:
    slurm = Slurm()
    home, run = work / "home", work / "run"
    env = {**os.environ, "HPCORCH_HOME": str(home), "PYTHONPATH": str(code)}
    args = [a for s in SETS for a in ("--set", s)]
    subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "submit", "jobs/gpt-tiny.yaml", "-p", "devcluster",
                    "--run-dir", str(run), *args], cwd=code, env=env, check=True, capture_output=True, timeout=120)
    status = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "status", str(run), "--json"], cwd=code,
                            env=env, check=True, capture_output=True, text=True, timeout=60)
    job_id = json.loads(status.stdout)["job_id"]
    stop = threading.Event()

    def lift() -> None:  # the `lifted` variant: someone outside the job lifts the hold
        while not stop.is_set():
            info = slurm.job(job_id)
            if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                time.sleep(2.0)
                slurm.start_now(job_id)
            time.sleep(0.5)

    victim = None
    try:
        poll_until(lambda: (json.loads((run / "progress.json").read_text()).get("step", 0) >= 30
                            if (run / "progress.json").exists() else None), 180, interval_s=0.1, what="step 30")
        victim = expand_hostlist(slurm.job(job_id)["NodeList"])[-1]
        if variant == "lifted":
            threading.Thread(target=lift, daemon=True).start()
        signalled = time.time()
        slurm.run("scontrol", "update", f"NodeName={victim}", "State=DOWN", "Reason=bench-stops")
        first = poll_until(lambda: (lambda f: f if len(f) >= 2 else None)(events(run, "first_step")), 400,
                           interval_s=0.5, what="the next attempt's first step")[1]["time"]
        committed = events(run, "checkpoint_committed")[0]["time"]
        out = slurm.run("sacct", "-D", "-n", "-P", "-o", "JobID,Start,End", "-j", job_id)
        rows = [line.split("|") for line in out.splitlines()]
        step_end = datetime.fromisoformat(next(e for j, _, e in rows if j == f"{job_id}.1")).timestamp()
        next_start = datetime.fromisoformat([s for j, s, _ in rows if j == job_id][1]).timestamp()
    finally:
        stop.set()
        slurm.run("scancel", job_id, check=False)
        if victim:
            poll_until(lambda: "COMPLETING" not in slurm.show("node", victim).get("State", ""), 120, interval_s=1)
            slurm.run("scontrol", "update", f"NodeName={victim}", "State=RESUME", check=False)
            poll_until(lambda: not slurm.run("sinfo", "-h", "-N", "-n", victim, "-o", "%T").strip().endswith("*"),
                       60, interval_s=0.5)
    return {"signal_to_step_end_s": step_end - signalled, "commit_to_next_start_s": next_start - committed,
            "commit_to_next_first_step_s": first - committed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--variants", default="hpcorch,lifted")
    args = parser.parse_args()
    os.environ.setdefault("SLURM_CONF", "/tmp/hpcorch-devcluster/etc/slurm.conf")
    rows = []
    for variant in args.variants.split(","):
        got = {}
        for name, code in (("baseline", args.baseline), ("this", REPO)):
            with tempfile.TemporaryDirectory(prefix="bench-stops-") as work:
                got[name] = one(code, variant, Path(work))
            print(f"[{variant}] {name}: {got[name]}", flush=True)
        rows.append((variant, got))
    print("\n| variant | figure | baseline s | this s | baseline / this |\n|---|---|---:|---:|---:|")
    for variant, got in rows:
        for key in ("signal_to_step_end_s", "commit_to_next_start_s", "commit_to_next_first_step_s"):
            b, t = got["baseline"][key], got["this"][key]
            print(f"| {variant} | {key} | {b:.1f} | {t:.1f} | {b / max(t, 0.1):.1f}x |")


if __name__ == "__main__":
    main()
