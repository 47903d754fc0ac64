"""`hpcorch sweep` of N points against N `hpcorch submit` calls (the loop a user writes today).

Dry run (default, no cluster): one `hpcorch sweep --dry-run` process against N
`hpcorch submit --dry-run` processes, and the same in-process (service.plan_sweep + render_sweep
against N service.plan + service.render), all for the same N points (trainer.seed=1..N).

--devcluster (inside the dev cluster's lock): one real `hpcorch sweep` submission of N points
(one sbatch per resource shape; the arrays are cancelled at once) against M real
`hpcorch submit` calls (each cancelled at once), M defaulting to N; the per-call time times N
is printed beside the measured M when M < N.

Usage: python bench/bench_sweep.py [--points 100] [--devcluster [--submits M]]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETS = ["trainer.steps=20", "resources.tasks_per_node=1", "trainer.global_batch=4", "trainer.micro_batch=2"]


def cli(*args, env=None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "hpcorch", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, timeout=600)
    if out.returncode:
        raise SystemExit(f"hpcorch {' '.join(map(str, args[:3]))} failed: {out.stderr.strip()}")
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--devcluster", action="store_true", help="submit for real on the dev cluster")
    parser.add_argument("--submits", type=int, default=None, help="how many real `hpcorch submit` calls")
    args = parser.parse_args()
    n = args.points
    sets = [a for s in SETS for a in ("--set", s)]
    seeds = ",".join(str(i) for i in range(1, n + 1))
    tmp = Path(tempfile.mkdtemp(prefix="hpcorch-bench-sweep-"))
    env = {"HPCORCH_HOME": str(tmp / "home")}
    if args.devcluster:
        return devcluster(args, n, sets, seeds, tmp, env)

    from hpcorch import service
    from hpcorch.service.sweep import SweepAxes, plan_sweep, render_sweep

    print(f"{n} points of gpt-tiny on profile devcluster, dry run (nothing submitted)")
    one = timed(lambda: cli("sweep", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--root", tmp / "s", "--name", "s",
                            "--grid", f"trainer.seed={seeds}", "--max-parallel", "8", "--dry-run", *sets, env=env))
    many = timed(lambda: [cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", tmp / f"r{i}",
                              "--set", f"trainer.seed={i}", "--dry-run", *sets, env=env) for i in range(1, n + 1)])
    print(f"  CLI: 1 `hpcorch sweep --dry-run`  {one:7.2f} s;  {n} `hpcorch submit --dry-run`  {many:7.2f} s;  "
          f"ratio {many / one:.1f}x")
    axes = SweepAxes(grid=[f"trainer.seed={seeds}"])
    service.render(service.plan("jobs/gpt-tiny.yaml", "devcluster", SETS, tmp / "warm"))  # imports, compiled template
    inproc = timed(lambda: render_sweep(plan_sweep("jobs/gpt-tiny.yaml", "devcluster", axes, "s", 8, SETS,
                                                   str(tmp / "s"))))
    loop = timed(lambda: [service.render(service.plan("jobs/gpt-tiny.yaml", "devcluster", [*SETS, f"trainer.seed={i}"],
                                                      tmp / f"r{i}")) for i in range(1, n + 1)])
    print(f"  in-process: plan_sweep+render_sweep {inproc:6.2f} s;  {n} x plan+render {loop:6.2f} s;  "
          f"ratio {loop / inproc:.2f}x (the sweep plans and renders every point too)")


def devcluster(args, n, sets, seeds, tmp, env) -> None:
    from hpcorch.cluster.devcluster import DevCluster
    from hpcorch.cluster.slurm import Slurm

    cluster = DevCluster("devcluster")
    if not cluster.is_up():
        raise SystemExit("the dev cluster is not up: hpcorch devcluster up")
    env["SLURM_CONF"] = str(cluster.etc / "slurm.conf")
    slurm = Slurm(env={"SLURM_CONF": env["SLURM_CONF"]})
    m = args.submits or n
    print(f"{n} points of gpt-tiny submitted to the dev cluster (cancelled at once)")
    one = timed(lambda: cli("sweep", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--root", tmp / "s", "--name", "s",
                            "--grid", f"trainer.seed={seeds}", "--max-parallel", "2", *sets, env=env))
    arrays = [a["id"] for a in json.loads((tmp / "s" / "sweep.json").read_text())["arrays"]]
    for array in arrays:
        slurm.cancel(array)
    ids = []

    def submit_all():
        for i in range(1, m + 1):
            out = cli("submit", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", tmp / f"r{i}",
                      "--set", f"trainer.seed={i}", "--json", *sets, env=env)
            ids.append(json.loads(out.stdout)["job_id"])
            slurm.cancel(ids[-1])

    many = timed(submit_all)
    scaled = many / m * n
    print(f"  1 `hpcorch sweep` ({len(arrays)} sbatch call(s), arrays {', '.join(arrays)}): {one:7.2f} s")
    print(f"  {m} `hpcorch submit` (each its own sbatch): {many:7.2f} s" +
          (f"  ({scaled:.1f} s for {n} at that rate)" if m < n else ""))
    print(f"  ratio {scaled / one:.1f}x")


if __name__ == "__main__":
    main()
