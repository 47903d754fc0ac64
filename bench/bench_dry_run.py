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
so that before and after are measured in the same run. ``--stages`` prints instead where a warm
dry run's time goes (in-process timers around each import and call, minimum over N fresh processes),
next to submitit's import and call, for this checkout and the ``--before`` one.
Usage: python bench/bench_dry_run.py [--repeat N] [--before DIR] [--stages]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
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

# --stages: each stage of a warm dry run timed in the child; printed as a JSON list of seconds.
STAGES = """
import json, time
t = [time.perf_counter()]
import click; t.append(time.perf_counter())
import hpcorch.cli.main; t.append(time.perf_counter())
from hpcorch import service; t.append(time.perf_counter())
plan = service.plan("jobs/gpt-tiny.yaml", "devcluster", [], None); t.append(time.perf_counter())
import jinja2, jinja2.sandbox; t.append(time.perf_counter())
service.render(plan); t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""
STAGE_NAMES = ["import click", "rest of hpcorch.cli.main", "from hpcorch import service", "service.plan",
               "import jinja2, jinja2.sandbox", "service.render"]
SUBMITIT_STAGES = """
import json, time
t0 = time.perf_counter()
from submitit.slurm.slurm import _make_sbatch_string
t1 = time.perf_counter()
""" + SUBMITIT_SCRIPT.replace("print(", "(") + """
print(json.dumps([t1 - t0, time.perf_counter() - t1]))
"""


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
    child = subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=subprocess.DEVNULL)
    # A blocking wait: Popen.wait(timeout) (and run(timeout=...)) polls with sleeps growing to 50 ms,
    # which rounded every wall time up to 0.064, 0.114, 0.164, 0.214 s ... (the poll schedule).
    # The timeout is a timer that kills a child that hangs.
    killer = threading.Timer(120, child.kill)
    killer.start()
    try:
        code = child.wait()
    finally:
        killer.cancel()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code:
        raise subprocess.CalledProcessError(code, cmd)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def stage_minima(script: str, cwd: Path, repeat: int) -> list[float]:
    """The minimum over ``repeat`` fresh processes of each stage ``script`` times (seconds)."""
    env = {**ENV, "PYTHONPATH": str(cwd)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, check=True, timeout=120,
                                      capture_output=True, text=True).stdout) for _ in range(repeat)]
    return [min(stage) for stage in zip(*runs, strict=True)]


def print_stages(before: Path | None, repeat: int) -> None:
    trees = {"this checkout": REPO, **({"--before": before} if before else {})}
    found = {name: stage_minima(STAGES, tree, repeat) for name, tree in trees.items()}
    print(f"load average {os.getloadavg()[0]:.2f}; minima of {repeat} processes, ms")
    print(f"{'stage':<34}" + "".join(f"{name:>16}" for name in found))
    for i, stage in enumerate(STAGE_NAMES):
        print(f"{stage:<34}" + "".join(f"{1e3 * t[i]:>16.1f}" for t in found.values()))
    print(f"{'hpcorch total':<34}" + "".join(f"{1e3 * sum(t):>16.1f}" for t in found.values()))
    theirs = stage_minima(SUBMITIT_STAGES, REPO, repeat)
    print(f"{'submitit import / call':<34}{1e3 * theirs[0]:>16.1f}{1e3 * theirs[1]:>16.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--before", type=Path, help="Another checkout of hpcorch to run the same dry run from.")
    parser.add_argument("--stages", action="store_true", help="Where a warm dry run's time goes, in-process.")
    args = parser.parse_args()
    if args.stages:
        print_stages(args.before, args.repeat)
        return
    todo = cases(args.before)
    load = f"{os.getloadavg()[0]:.2f}"
    for case in todo.values():  # warm the page cache (and write .pyc files, fill the user cache) first
        case.run()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in todo}
    for _ in range(args.repeat):
        for name, case in todo.items():
            samples[name].append(case.run())
    wall = {name: statistics.median(s[0] for s in runs) for name, runs in samples.items()}
    # The best round: the least disturbed by the other processes of a shared machine.
    best = {name: min(s[0] for s in runs) for name, runs in samples.items()}
    cpu = {name: statistics.median(s[1] for s in runs) for name, runs in samples.items()}
    print(f"load average before/after: {load} / {os.getloadavg()[0]:.2f}; medians of {args.repeat} runs")
    print(f"{'case':<32}{'wall s':>8}{'x python':>10}{'x submitit':>12}{'cpu s':>8}{'x submitit':>12}"
          f"{'best wall':>11}{'x submitit':>12}")
    for name in todo:
        print(f"{name:<32}{wall[name]:>8.3f}{wall[name] / wall['python -c pass']:>10.2f}"
              f"{wall[name] / wall['submitit _make_sbatch_string']:>12.2f}"
              f"{cpu[name]:>8.3f}{cpu[name] / cpu['submitit _make_sbatch_string']:>12.2f}"
              f"{best[name]:>11.3f}{best[name] / best['submitit _make_sbatch_string']:>12.2f}")


if __name__ == "__main__":
    main()
