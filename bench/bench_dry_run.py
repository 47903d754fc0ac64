"""Cold time of `hpcorch submit JOB --dry-run` as a whole process, against baselines in the same run.

Baselines: `python -c pass` (the interpreter's floor) and a process that builds an sbatch script
with submitit's own `_make_sbatch_string` (what plain submitit costs to get a script).
The cases run interleaved (one of each per round) so that a load change on a shared machine hits
them alike; each prints the median wall time and the median CPU time (user + system) of the child,
which other processes on the machine disturb much less. Children run with bytecode caching on
(PYTHONDONTWRITEBYTECODE removed), as an installed package does: otherwise hpcorch's modules would be
compiled from source in every process while submitit's come from its installed .pyc files.
hpcorch's case runs this checkout (PYTHONPATH set to it) with its user cache filled by the warm-up
run, as after any earlier command; "empty user cache" runs it with a fresh $XDG_CACHE_HOME each time
(a first command ever: templates compiled, YAML parsed). ``--before DIR`` adds the same command run
from another checkout (e.g. ``git archive COMMIT | tar -x -C DIR``), interleaved with the others,
so that before and after are measured in the same run.
Usage: python bench/bench_dry_run.py [--repeat N] [--before DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SUBMITIT_SCRIPT = """
from submitit.slurm.slurm import _make_sbatch_string
print(_make_sbatch_string(command="python -u -m submitit.core._submit /tmp/x", folder="/tmp/x/%j",
      job_name="gpt-tiny", partition="batch", time=15, nodes=1, ntasks_per_node=2, cpus_per_task=1,
      mem="2000M", additional_parameters={"requeue": True}))
"""

DRY_RUN = [sys.executable, "-m", "hpcorch.cli.main", "submit", "jobs/gpt-tiny.yaml", "--profile", "devcluster",
           "--dry-run"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


class Case:
    """A command, the folder it runs in, and its environment (a fresh user cache per run if asked)."""

    def __init__(self, cmd: list[str], cwd: Path = REPO, pythonpath: Path | None = None, fresh_cache: bool = False):
        self.cmd, self.cwd, self.fresh_cache = cmd, cwd, fresh_cache
        self.env = {**ENV, "PYTHONPATH": str(pythonpath)} if pythonpath else ENV

    def run(self) -> tuple[float, float]:
        if not self.fresh_cache:
            return run_once(self.cmd, self.cwd, self.env)
        with tempfile.TemporaryDirectory() as cache:
            return run_once(self.cmd, self.cwd, {**self.env, "XDG_CACHE_HOME": cache})


def cases(before: Path | None) -> dict[str, Case]:
    found = {
        "python -c pass": Case([sys.executable, "-c", "pass"]),
        "submitit _make_sbatch_string": Case([sys.executable, "-c", SUBMITIT_SCRIPT]),
        "hpcorch submit --dry-run": Case(DRY_RUN, pythonpath=REPO),
        "  empty user cache": Case(DRY_RUN, pythonpath=REPO, fresh_cache=True),
    }
    if before is not None:
        found["  before (--before)"] = Case(DRY_RUN, cwd=before, pythonpath=before)
    return found


def run_once(cmd: list[str], cwd: Path = REPO, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one cold run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env or ENV, check=True, stdout=subprocess.DEVNULL, timeout=120)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--before", type=Path, help="Another checkout of hpcorch to run the same dry run from.")
    args = parser.parse_args()
    todo = cases(args.before)
    load = f"{os.getloadavg()[0]:.2f}"
    for case in todo.values():  # warm the page cache (and write .pyc files, fill the user cache) first
        case.run()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in todo}
    for _ in range(args.repeat):
        for name, case in todo.items():
            samples[name].append(case.run())
    wall = {name: statistics.median(s[0] for s in runs) for name, runs in samples.items()}
    cpu = {name: statistics.median(s[1] for s in runs) for name, runs in samples.items()}
    print(f"load average before/after: {load} / {os.getloadavg()[0]:.2f}; medians of {args.repeat} runs")
    print(f"{'case':<32}{'wall s':>8}{'x python':>10}{'x submitit':>12}{'cpu s':>8}{'x submitit':>12}")
    for name in todo:
        print(f"{name:<32}{wall[name]:>8.3f}{wall[name] / wall['python -c pass']:>10.2f}"
              f"{wall[name] / wall['submitit _make_sbatch_string']:>12.2f}"
              f"{cpu[name]:>8.3f}{cpu[name] / cpu['submitit _make_sbatch_string']:>12.2f}")


if __name__ == "__main__":
    main()
