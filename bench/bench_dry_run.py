"""Cold time of `hpcorch submit JOB --dry-run` as a whole process, against baselines in the same run.

Baselines: `python -c pass` (the interpreter's floor) and a process that builds an sbatch script
with submitit's own `_make_sbatch_string` (what plain submitit costs to get a script).
Usage: python bench/bench_dry_run.py [--repeat N]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SUBMITIT_SCRIPT = """
from submitit.slurm.slurm import _make_sbatch_string
print(_make_sbatch_string(command="python -u -m submitit.core._submit /tmp/x", folder="/tmp/x/%j",
      job_name="gpt-tiny", partition="batch", time=15, nodes=1, ntasks_per_node=2, cpus_per_task=1,
      mem="2000M", additional_parameters={"requeue": True}))
"""

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "submitit _make_sbatch_string": [sys.executable, "-c", SUBMITIT_SCRIPT],
    "hpcorch submit --dry-run": [sys.executable, "-m", "hpcorch.cli.main", "submit", "jobs/gpt-tiny.yaml",
                                 "--profile", "devcluster", "--dry-run"],
}


def time_cold(cmd: list[str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, timeout=120)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    for cmd in CASES.values():  # warm the page cache so every case is equally "cold" in-process
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, timeout=120)
    times = {name: time_cold(cmd, args.repeat) for name, cmd in CASES.items()}
    base = times["python -c pass"]
    submitit = times["submitit _make_sbatch_string"]
    print(f"{'case':<32}{'median s':>10}{'x python':>10}{'x submitit':>12}")
    for name, t in times.items():
        print(f"{name:<32}{t:>10.3f}{t / base:>10.2f}{t / submitit:>12.2f}")


if __name__ == "__main__":
    main()
