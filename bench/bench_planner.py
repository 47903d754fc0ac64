"""Cold time of ``hpcorch plan jobs/gpt-1.3b.yaml`` (memory, time and checkpoint planner
included) on a 4,096-node profile: a whole process each run, as a user starts it.

Baselines in the same run: ``python -c pass`` (the interpreter's start) and ``hpcorch --help``
(the CLI's imports). The profile is bench_scale.py's generated one (3/4 GPU nodes of 8 H100, a
three-level switch tree); the registry (``$HPCORCH_HOME``) is a fresh one holding ``--runs``
completed runs of the job on that profile, each with ``--steps`` metrics lines and checkpoint
events, so the plan's MFU and save-time calibration reads real files. Goal: plan <= 1 s.

Usage: PYTHONPATH=. python bench/bench_planner.py [--repeat N] [--nodes N] [--runs N] [--steps N]

Measured on the 2-core shared dev VM (Python 3.11, other jobs running), 7 cold runs, median / min s:

    registry                        python -c pass   hpcorch --help   plan gpt-1.3b    plan --json
    empty (--runs 0)                0.050 / 0.039    0.108 / 0.105    0.211 / 0.206    0.284 / 0.228
    20 runs x 2,000 steps           0.038 / 0.037    0.126 / 0.110    0.722 / 0.433    0.416 / 0.404
    20 runs x 40,000 steps          0.055 / 0.044    0.156 / 0.107    0.456 / 0.350    0.534 / 0.349

(the calibration reads the last 256 KiB of each run's metrics, so long runs cost no more.)
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

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_scale import profile_data  # noqa: E402

from hpcorch.state.registry import Registry  # noqa: E402


def fake_runs(home: Path, profile: str, runs: int, steps: int) -> None:
    """``runs`` completed runs of gpt-1.3b on ``profile`` in the registry under ``home``."""
    reg = Registry(home / "registry.sqlite")
    for i in range(runs):
        run = home / "runs" / f"r{i}"
        run.mkdir(parents=True)
        with open(run / "metrics.jsonl", "w") as f:
            for step in range(1, steps + 1):
                f.write(json.dumps({"step": step, "time": 1.7e9 + step, "loss": 3.0, "lr": 2e-4, "grad_norm": 1.0,
                                    "step_time_s": 0.2, "tokens_per_s": 5e6, "mfu": 0.30 + 0.01 * (i % 5),
                                    "max_mem_mb": 50000.0}) + "\n")
        with open(run / "events.jsonl", "w") as f:
            for step in range(1000, steps + 1, 1000):
                f.write(json.dumps({"event": "checkpoint_save", "time": 1.7e9 + step, "step": step,
                                    "blocking_s": 12.0 + i % 3}) + "\n")
        (run / "summary.json").write_text("{}")
        reg.add(str(1000 + i), "gpt-1.3b", profile, "slurm", str(run), "jobs/gpt-1.3b.yaml")


def cold(cmd: list[str], env: dict, repeat: int) -> tuple[float, float, str]:
    """Median and minimum wall seconds of ``cmd`` as a new process; its last output line."""
    samples, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        out = done.stdout
    return statistics.median(samples), min(samples), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        profile = Path(tmp) / "scale.yaml"
        profile.write_text(yaml.safe_dump(profile_data(args.nodes), sort_keys=False))
        fake_runs(home, "scale", args.runs, args.steps)
        env = {**os.environ, "HPCORCH_HOME": str(home), "PYTHONPATH": str(REPO)}
        py = sys.executable
        cases = [("python -c pass", [py, "-c", "pass"]),
                 ("hpcorch --help", [py, "-m", "hpcorch.cli.main", "--help"]),
                 ("hpcorch plan gpt-1.3b", [py, "-m", "hpcorch.cli.main", "plan", "jobs/gpt-1.3b.yaml",
                                            "-p", str(profile)]),
                 ("hpcorch plan gpt-1.3b --json", [py, "-m", "hpcorch.cli.main", "plan", "jobs/gpt-1.3b.yaml", "-p",
                                                   str(profile), "--json"])]
        print(f"{args.nodes:,}-node profile, {args.runs} completed runs x {args.steps} steps in the registry, "
              f"{args.repeat} cold runs each (median, min; seconds)")
        for name, cmd in cases:
            med, low, out = cold(cmd, env, args.repeat)
            print(f"  {name:32} {med:6.3f}  {low:6.3f}")
        info = json.loads(out)
        print("  plan --json memory_gib:", json.dumps(info["memory_gib"]))
        print("  plan --json time:", json.dumps(info["time"]))


if __name__ == "__main__":
    main()
