"""Start-up time of `hpcorch train` with N CPU ranks, by phase, before and after a change.

    python bench/bench_startup.py [--before REV|exec] [--after REV] [--nproc 4] [--repeat 3]

Each tree (a git revision exported to a temporary folder; the default "after" is the working
tree; "exec", the default "before", is the "after" tree with ``HPCORCH_FORK_RANKS=0``: one
interpreter per rank instead of one node launcher that imports torch once and forks the ranks)
trains gpt-tiny twice per repetition in a fresh run directory:

- fresh: no checkpoint; 2 steps, a checkpoint at step 2;
- restart: the same run directory again with 4 steps (``--allow-config-change``): the path of a
  requeued job, restoring step 2's checkpoint (and, after the change, finding the token cache).

Phases come from rank 0's ``first_step`` event (``startup_s``: process start to first step,
see hpcorch/train/startup.py); "launcher" is from this script starting `hpcorch train` to rank
0's process start (a forked rank's is its node launcher's). Both trees must have the phase
instrumentation. Runs of the two trees alternate, and each repetition also times one
``python -c "import torch"`` (a fresh interpreter), so load from other work on the machine falls
on all alike: the figure of merit is rank 0's ``startup_s`` (process start to first step) over
the median ``import torch``, printed for both trees, with the load average. At the end, for
reference: ``import torch`` N at once, and N processes importing what every rank needs of torch
(torch, torch._dynamo which torch.optim's constructors import, torch.distributed.checkpoint).
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
SETS = ["trainer.micro_batch=4", "trainer.eval_interval=0", "trainer.checkpoint.interval=2"]
PHASES = ["launcher", "interpreter", "imports", "fork", "job", "process_group", "model", "data", "settle", "setup",
          "restore", "records", "first_step"]


def export_tree(rev: str, into: Path) -> Path:
    """``rev`` of this repository as plain files under ``into`` (``WORKTREE``: the working tree)."""
    if rev == "WORKTREE":
        return REPO
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def train(tree: Path, run_dir: Path, nproc: int, steps: int, home: Path, env: dict | None = None) -> dict[str, float]:
    """One `hpcorch train`; its phases in seconds, rank 0's ``startup`` (their sum) and the
    total from the launcher's start."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HPCORCH_HOME": str(home), **(env or {})}
    sets = [a for s in SETS + [f"trainer.steps={steps}"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "hpcorch", "train", str(tree / "hpcorch/jobs/gpt-tiny.yaml"), "-n", str(nproc),
           "--run-dir", str(run_dir), "--allow-config-change", *sets]
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the launcher and its ranks: its own session
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out.decode()[-3000:]}")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    start = [e for e in events if e["event"] == "process_start"][-1]
    first = [e for e in events if e["event"] == "first_step"][-1]
    phases = {"launcher": start["time"] - started, **first["startup_s"]}
    phases["startup"] = first["time"] - start["time"]
    phases["total"] = first["time"] - started
    return phases


def timed(cmds: list[list[str]]) -> float:
    """Wall time of running ``cmds`` all at once."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c) for c in cmds]
    for p in procs:
        p.wait(timeout=300)
    return time.perf_counter() - start


def references(nproc: int, repeat: int) -> dict[str, float]:
    py = sys.executable
    what = {"python -c 'import torch'": [[py, "-c", "import torch"]],
            f"{nproc} x import torch at once": [[py, "-c", "import torch"]] * nproc,
            f"{nproc} x import torch, torch._dynamo, torch.distributed.checkpoint at once":
                [[py, "-c", "import torch, torch._dynamo, torch.distributed.checkpoint"]] * nproc}
    return {name: statistics.median(timed(cmds) for _ in range(repeat)) for name, cmds in what.items()}


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    lines = ["| phase (s, median) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    labels = {"startup": "**startup_s** (rank 0: process start to first step)",
              "total": "**total** (launcher start to first step)"}
    for phase in PHASES + ["startup", "total"]:
        cells = []
        for n in names:
            values = [r[phase] for r in results[n] if phase in r]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        lines.append(f"| {labels.get(phase, phase)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def import_torch() -> float:
    """Wall time of one fresh ``python -c "import torch"``."""
    return timed([[sys.executable, "-c", "import torch"]])


def in_process(tree: Path, code: str) -> float:
    """Seconds ``code`` takes inside a fresh interpreter (its start and exit not counted)."""
    timer = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", timer], env={**os.environ, "PYTHONPATH": str(tree)},
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def floor(tree: Path) -> tuple[float, float]:
    """In-process seconds of ``import torch`` and of the node launcher's imports for its ranks
    (:func:`hpcorch.train.forked.preload`): the floor of a forked rank's start-up."""
    return (in_process(tree, "import torch"),
            in_process(tree, "from hpcorch.train.forked import preload; preload()"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="exec",
                        help="git revision, or 'exec': the after tree with one interpreter per rank [default]")
    parser.add_argument("--after", default="WORKTREE", help="git revision [default: the working tree]")
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    before = args.before
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        after = export_tree(args.after, tmp / "after")
        trees = {"before": (after, {"HPCORCH_FORK_RANKS": "0"}) if before == "exec" else
                 (export_tree(before, tmp / "before"), {}), "after": (after, {})}
        results: dict[str, list[dict]] = {f"{t} {k}": [] for k in ("fresh", "restart") for t in trees}
        torch_s, floors = [], []
        for i in range(args.repeat):
            torch_s.append(import_torch())
            floors.append(floor(after))
            for name, (tree, env) in trees.items():
                run = tmp / f"run-{name}-{i}"
                results[f"{name} fresh"].append(train(tree, run, args.nproc, 2, tmp / "home", env))
                results[f"{name} restart"].append(train(tree, run, args.nproc, 4, tmp / "home", env))
                print(f"repeat {i + 1}/{args.repeat} {name}: fresh {results[f'{name} fresh'][-1]['total']:.2f} s, "
                      f"restart {results[f'{name} restart'][-1]['total']:.2f} s", file=sys.stderr)
            load.append(os.getloadavg()[0])
        refs = references(args.nproc, args.repeat)
    print(f"before = {before[:12]}, after = {args.after}; {args.nproc} CPU ranks, gpt-tiny, median of "
          f"{args.repeat}, {os.cpu_count()} CPUs, load average (1 min) {min(load):.2f}-{max(load):.2f}\n")
    print(table({k: results[k] for k in ("before fresh", "after fresh", "before restart", "after restart")}))
    torch_median = statistics.median(torch_s)
    print(f"\n`import torch` alone, fresh interpreter, between the runs: {torch_median:.2f} s (median of "
          f"{len(torch_s)}: {', '.join(f'{t:.2f}' for t in torch_s)})\n")
    inside_torch, inside_preload = (statistics.median(f[i] for f in floors) for i in (0, 1))
    print(f"In-process, between the runs: `import torch` {inside_torch:.2f} s; the node launcher's imports "
          f"(forked.preload: torch, torch._dynamo, dcp, the trainer) {inside_preload:.2f} s = "
          f"{inside_preload / inside_torch:.2f}x, the floor of the forked start-up's ratio\n")
    print("| rank 0's startup_s / import torch (median) | fresh | restart |\n|---|---:|---:|")
    for name in trees:
        cells = [statistics.median(r["startup"] for r in results[f"{name} {k}"]) / torch_median
                 for k in ("fresh", "restart")]
        print(f"| {name} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    print("\n| reference (wall s, median) | |\n|---|---:|")
    for name, seconds in refs.items():
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
