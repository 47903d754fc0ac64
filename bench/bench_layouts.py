"""Peak memory per rank and step time of each ``trainer.parallel`` layout against DDP, on CPU
(gloo), through the real ``hpcorch train`` launcher.

Memory per rank, from /proc while the ranks run: "train" is the largest RSS (``VmRSS``) seen
while the steps after the first run (parameters, gradients, AdamW state, activations as
sampled every 0.1 s), "peak" the process's high-water mark (``VmHWM``), which also holds the
build (every rank builds the whole seeded model before sharding or cutting it: meta-device
init is not done yet) and the final full-state gather of the digest/checkpoint on rank 0.
Both include the ~0.3-0.4 GiB every torch process holds whatever the model. Step time is the median
of rank 0's ``step_time_s`` after the first two steps. CPU is not where tp and pp pay off: the
step times say what the extra collectives cost on gloo, not what they would cost on NVLink.

Usage: python bench/bench_layouts.py [--width 384] [--layers 8] [--steps 6] [--nproc 4]
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

# A fixed mmap threshold: glibc otherwise raises it after large frees and keeps freed tensors in
# its heap, so RSS would stay at the whole model built before sharding and hide FSDP's savings.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}

LAYOUTS = {
    "ddp (dp4)": [],
    "fsdp4": ["trainer.sharding=fsdp"],
    "tp2 x dp2": ["trainer.parallel.tp=2"],
    "tp2 x fsdp2": ["trainer.parallel.tp=2", "trainer.sharding=fsdp"],
    "pp2 x dp2": ["trainer.parallel.pp=2"],
    "tp2 x pp2": ["trainer.parallel.tp=2", "trainer.parallel.pp=2"],
    "pp4 1f1b": ["trainer.parallel.pp=4"],
}


def rss_mb(pids: dict[int, int], field: str) -> dict[int, float]:
    """``VmHWM`` or ``VmRSS`` (MiB) of each rank's process that is still alive: {rank: MiB}."""
    out = {}
    for pid, rank in pids.items():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    out[rank] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


def rank_processes(run_dir: Path) -> dict[int, int]:
    """{pid: rank} of the ``python -m hpcorch.train`` processes training in ``run_dir``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if b"hpcorch.train" not in cmd or str(run_dir).encode() not in cmd:
                continue
            env = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
            found[int(proc.name)] = int(env.get(b"RANK", b"-1"))
        except (OSError, ValueError):
            pass
    return found


def run(name: str, sets: list[str], args, root: Path) -> dict:
    run_dir = root / name.replace(" ", "_")
    model = [f"trainer.model.width={args.width}", f"trainer.model.layers={args.layers}", "trainer.model.heads=8",
             "trainer.model.seq_len=64", "trainer.global_batch=16", "trainer.micro_batch=4",
             f"trainer.steps={args.steps}", "trainer.checkpoint.interval=100000", "trainer.eval_interval=0",
             "trainer.eval_batches=1", "trainer.log_interval=1000", "trainer.data.max_bytes=2000000",
             "trainer.collective_timeout_s=600"]
    cmd = [sys.executable, "-m", "hpcorch.cli.main", "train", "jobs/gpt-tiny.yaml", "--nproc", str(args.nproc),
           "--run-dir", str(run_dir), *[a for s in model + sets for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **MALLOC})
    peaks: dict[int, float] = {}
    train: dict[int, float] = {}
    pids: dict[int, int] = {}
    while proc.poll() is None:
        pids = pids if len(pids) == args.nproc else rank_processes(run_dir)
        for rank, mb in rss_mb(pids, "VmHWM").items():
            peaks[rank] = max(peaks.get(rank, 0.0), mb)
        if 1 <= _step(run_dir) < args.steps:  # training, after the first step
            for rank, mb in rss_mb(pids, "VmRSS").items():
                train[rank] = max(train.get(rank, 0.0), mb)
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{out[-3000:]}")
    times = [json.loads(line)["step_time_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"peaks": peaks, "train": train, "step_s": statistics.median(times[2:] or times)}


def _step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=4)
    args = parser.parse_args()
    params = 12 * args.width ** 2 * args.layers + 256 * args.width
    print(f"model: {args.layers} layers, width {args.width}, {params / 1e6:.1f}M parameters "
          f"({params * 16 / 2**20:.0f} MiB of fp32 weights + grads + AdamW state); "
          f"{args.nproc} CPU ranks, gloo, fp32")
    results = {}
    with tempfile.TemporaryDirectory(prefix="hpcorch-bench-layouts-") as tmp:
        for name, sets in LAYOUTS.items():
            results[name] = run(name, sets, args, Path(tmp))
    base = results["ddp (dp4)"]
    print(f"{'layout':12s} {'train RSS per rank, MiB':26s} {'/DDP':>5s}  {'peak RSS per rank, MiB':26s} "
          f"{'/DDP':>5s} {'step s':>7s} {'/DDP':>5s}")
    for name, r in results.items():
        cols = []
        for key in ("train", "peaks"):
            mb = [r[key].get(k, float("nan")) for k in range(args.nproc)]
            cols.append(f"{' '.join(f'{m:6.0f}' for m in mb):26s} {max(mb) / max(base[key].values()):5.2f}")
        print(f"{name:12s} {cols[0]}  {cols[1]} {r['step_s']:7.3f} {r['step_s'] / base['step_s']:5.2f}")


if __name__ == "__main__":
    main()
