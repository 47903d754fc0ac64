"""Cold time of `hpcorch submit JOB --dry-run` as a whole process, against baselines in the same run.

Baselines: `python -c pass` (the interpreter's floor) and a process that builds an sbatch script
with submitit's own `_make_sbatch_string` (what plain submitit costs to get a script).
The cases run interleaved (one of each per round) so that a load change on a shared machine hits
them alike; each prints the median wall time and the median CPU time (user + system) of the child,
which other processes on the machine disturb much less. Children run with bytecode caching on
(PYTHONDONTWRITEBYTECODE removed), as an installed package does: otherwise hpcorch's modules would be
compiled from source in every process while submitit's come from its installed .pyc files.
Usage: python bench/bench_dry_run.py [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import resource
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


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one cold run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=ENV, check=True, stdout=subprocess.DEVNULL, timeout=120)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    for cmd in CASES.values():  # warm the page cache (and write .pyc files) before measuring
        run_once(cmd)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name, cmd in CASES.items():
            samples[name].append(run_once(cmd))
    wall = {name: statistics.median(s[0] for s in runs) for name, runs in samples.items()}
    cpu = {name: statistics.median(s[1] for s in runs) for name, runs in samples.items()}
    print(f"{'case':<32}{'wall s':>8}{'x python':>10}{'x submitit':>12}{'cpu s':>8}{'x submitit':>12}")
    for name in CASES:
        print(f"{name:<32}{wall[name]:>8.3f}{wall[name] / wall['python -c pass']:>10.2f}"
              f"{wall[name] / wall['submitit _make_sbatch_string']:>12.2f}"
              f"{cpu[name]:>8.3f}{cpu[name] / cpu['submitit _make_sbatch_string']:>12.2f}")


if __name__ == "__main__":
    main()
