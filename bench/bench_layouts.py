"""Peak memory per rank and step time of each ``trainer.parallel`` layout against DDP, on CPU
(gloo), through the real ``hpcorch train`` launcher.

Peak memory is each rank's peak RSS (``VmHWM`` of its process, read from /proc while it runs),
so it includes the ~0.3-0.4 GiB every torch process holds whatever the model; the model's own
share (parameters, gradients, AdamW state) is what the layouts change. Step time is the median
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

LAYOUTS = {
    "ddp (dp4)": [],
    "fsdp4": ["trainer.sharding=fsdp"],
    "tp2 x dp2": ["trainer.parallel.tp=2"],
    "tp2 x fsdp2": ["trainer.parallel.tp=2", "trainer.sharding=fsdp"],
    "pp2 x dp2": ["trainer.parallel.pp=2"],
    "tp2 x pp2": ["trainer.parallel.tp=2", "trainer.parallel.pp=2"],
    "pp4 1f1b": ["trainer.parallel.pp=4"],
}


def peak_rss_mb(pids: dict[int, int]) -> dict[int, float]:
    """VmHWM (peak RSS, MiB) of each rank's process that is still alive: {rank: MiB}."""
    out = {}
    for pid, rank in pids.items():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
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
    cmd = [sys.executable, "-m", "hpcorch.cli", "train", "jobs/gpt-tiny.yaml", "--nproc", str(args.nproc),
           "--run-dir", str(run_dir), *[a for s in model + sets for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        for rank, mb in peak_rss_mb(rank_processes(run_dir)).items():
            peaks[rank] = max(peaks.get(rank, 0.0), mb)
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{out[-3000:]}")
    times = [json.loads(line)["step_time_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"peaks": peaks, "step_s": statistics.median(times[2:] or times)}


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
    base_peak = max(base["peaks"].values())
    print(f"{'layout':14s} {'peak RSS per rank, MiB (rank 0..)':36s} {'max/DDP':>8s} {'step s':>8s} {'step/DDP':>9s}")
    for name, r in results.items():
        peaks = [r["peaks"].get(k, float('nan')) for k in range(args.nproc)]
        print(f"{name:14s} {' '.join(f'{p:7.0f}' for p in peaks):36s} {max(peaks) / base_peak:8.2f} "
              f"{r['step_s']:8.3f} {r['step_s'] / base['step_s']:9.2f}")


if __name__ == "__main__":
    main()
