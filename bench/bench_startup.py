"""Start-up time of `hpcorch train` with N CPU ranks, by phase, before and after a change.

    python bench/bench_startup.py [--before REV] [--after REV] [--nproc 4] [--repeat 3]

Each tree (a git revision exported to a temporary folder; the default "after" is the working
tree) trains gpt-tiny twice per repetition in a fresh run directory:

- fresh: no checkpoint; 2 steps, a checkpoint at step 2;
- restart: the same run directory again with 4 steps (``--allow-config-change``): the path of a
  requeued job, restoring step 2's checkpoint (and, after the change, finding the token cache).

Phases come from rank 0's ``first_step`` event (``startup_s``: process start to first step,
see hpcorch/train/startup.py); "launcher" is from this script starting `hpcorch train` to rank
0's process start. Both trees must have the phase instrumentation (the default "before" is the
commit that added it, without the changes after it). Runs of the two trees alternate, so load
from other work on the machine falls on both alike. In the same run, for reference:
``python -c "import torch"`` alone and N at once, and N processes importing what every rank
needs of torch (torch, torch._dynamo which torch.optim's constructors import, and
torch.distributed.checkpoint).
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
PHASES = ["launcher", "interpreter", "imports", "job", "process_group", "model", "data", "settle", "setup",
          "restore", "records", "first_step"]


def export_tree(rev: str, into: Path) -> Path:
    """``rev`` of this repository as plain files under ``into`` (``WORKTREE``: the working tree)."""
    if rev == "WORKTREE":
        return REPO
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def default_before() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "--grep", "^Start-up phases", "-n", "1"],
                         capture_output=True, text=True, check=True).stdout.strip()
    if not out:
        sys.exit("no commit 'Start-up phases ...' found: pass --before REV")
    return out


def train(tree: Path, run_dir: Path, nproc: int, steps: int, home: Path) -> dict[str, float]:
    """One `hpcorch train`; its phases in seconds and the total from the launcher's start."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HPCORCH_HOME": str(home)}
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
    for phase in PHASES + ["total"]:
        cells = []
        for n in names:
            values = [r[phase] for r in results[n] if phase in r]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        lines.append(f"| {'**total** (launcher start to first step)' if phase == 'total' else phase} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="git revision [default: the 'Start-up phases' commit]")
    parser.add_argument("--after", default="WORKTREE", help="git revision [default: the working tree]")
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    before = args.before or default_before()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        trees = {"before": export_tree(before, tmp / "before"), "after": export_tree(args.after, tmp / "after")}
        results: dict[str, list[dict]] = {f"{t} {k}": [] for k in ("fresh", "restart") for t in trees}
        for i in range(args.repeat):
            for name, tree in trees.items():
                run = tmp / f"run-{name}-{i}"
                results[f"{name} fresh"].append(train(tree, run, args.nproc, 2, tmp / "home"))
                results[f"{name} restart"].append(train(tree, run, args.nproc, 4, tmp / "home"))
                print(f"repeat {i + 1}/{args.repeat} {name}: fresh {results[f'{name} fresh'][-1]['total']:.2f} s, "
                      f"restart {results[f'{name} restart'][-1]['total']:.2f} s", file=sys.stderr)
        refs = references(args.nproc, args.repeat)
    print(f"before = {before[:12]}, after = {args.after}; {args.nproc} CPU ranks, gpt-tiny, median of "
          f"{args.repeat}, {os.cpu_count()} CPUs\n")
    print(table({k: results[k] for k in ("before fresh", "after fresh", "before restart", "after restart")}))
    print("\n| reference (wall s, median) | |\n|---|---:|")
    for name, seconds in refs.items():
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
