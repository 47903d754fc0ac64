"""Step time and loss of hpcorch's trainer against nanoGPT's own ``train.py``, one CPU process each.

Same model (gpt-tiny's shape, no bias, no dropout, tied embeddings), same batch (global batch 16
as 2 micro-batches of 8 sequences of 128), same optimizer (AdamW, betas 0.9/0.95, weight decay
0.1 on matrices, grad clip 1.0, warmup + cosine from 3e-3 to 3e-4), same bytes (the first
``--max-bytes`` of the Python standard library, written once as nanoGPT's ``train.bin`` /
``val.bin`` pair, which hpcorch reads through ``trainer.data.val_path``), fp32, one intra-op thread.

nanoGPT is not vendored: point ``--nanogpt`` or ``NANOGPT_DIR`` at a checkout of
https://github.com/karpathy/nanoGPT (MIT). Its ``train.py`` runs unmodified in a subprocess,
from a scratch folder holding the data and a copy of its ``configurator.py``.

Step time is the wall time from one step's end to the next's, for both: nanoGPT's printed
``time`` (its loop includes the LR setting, batch fetching, clipping, the optimizer and the
log line) and, for hpcorch, the interval between rank 0's per-step reports (the whole loop:
batches, the loss/stop all-reduce, metrics, progress file, checkpoint check). The first
``--skip`` steps are warm-up; the runs alternate ``--rounds`` times (round r seeds both with
``--seed`` + r); step times are the median over rounds, losses the mean over the seeds.

Usage: NANOGPT_DIR=~/nanoGPT python bench/bench_nanogpt.py [--steps 200] [--rounds 5] [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPE = dict(layers=2, heads=4, width=128, seq_len=128, vocab=256)
BATCH = dict(global_batch=16, micro_batch=8)
OPT = dict(lr=3e-3, min_lr=3e-4, weight_decay=0.1, warmup_steps=20, grad_clip=1.0)
ITER_RE = re.compile(r"^iter (\d+): loss ([0-9.]+), time ([0-9.]+)ms", re.M)
VAL_RE = re.compile(r"^step (\d+): train loss [0-9.]+, val loss ([0-9.]+)", re.M)
EVAL_BATCHES = 50  # validation micro-batches (of 8 sequences) for the final loss, both sides


def write_data(folder: Path, max_bytes: int) -> None:
    """nanoGPT's layout: data/bench/{train,val}.bin (uint16) and meta.pkl (its vocab size)."""
    import pickle

    import numpy as np

    from hpcorch.train.data import read_bytes, stdlib_files

    data = read_bytes(stdlib_files(), max_bytes).astype(np.uint16)
    split = int(len(data) * 0.95)
    folder.mkdir(parents=True, exist_ok=True)
    data[:split].tofile(folder / "train.bin")
    data[split:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": SHAPE["vocab"]}, f)


def run_nanogpt(nanogpt: Path, work: Path, steps: int, clock: str, seed: int) -> tuple[list[float], list[float], float]:
    """nanoGPT's train.py, unmodified, in a child (``--nanogpt-child``) whose ``time.time``
    is ``clock``; its per-iteration (loss, seconds) and its validation loss before the last
    step (it evaluates at ``eval_interval`` iterations, here the last one)."""
    shutil.copy(nanogpt / "configurator.py", work / "configurator.py")
    accum = BATCH["global_batch"] // BATCH["micro_batch"]
    args = {"dataset": "bench", "device": "cpu", "compile": False, "dtype": "float32",
            "n_layer": SHAPE["layers"], "n_head": SHAPE["heads"], "n_embd": SHAPE["width"],
            "block_size": SHAPE["seq_len"], "bias": False, "dropout": 0.0,
            "batch_size": BATCH["micro_batch"], "gradient_accumulation_steps": accum,
            "learning_rate": OPT["lr"], "min_lr": OPT["min_lr"], "weight_decay": OPT["weight_decay"],
            "beta1": 0.9, "beta2": 0.95, "grad_clip": OPT["grad_clip"], "warmup_iters": OPT["warmup_steps"],
            "lr_decay_iters": steps, "max_iters": steps - 1, "eval_interval": steps - 1, "eval_iters": EVAL_BATCHES,
            "log_interval": 1, "always_save_checkpoint": False, "out_dir": str(work / "out")}
    cmd = [sys.executable, __file__, "--clock", clock, "--seed", str(seed),
           "--nanogpt-child", str(nanogpt / "train.py"),
           *(f"--{k}={v}" for k, v in args.items())]
    out = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, check=True).stdout
    rows = [(int(i), float(loss), float(ms) / 1000) for i, loss, ms in ITER_RE.findall(out)]
    assert len(rows) == steps, out[-2000:]
    val = float(VAL_RE.findall(out)[-1][1])
    return [r[1] for r in rows], [r[2] for r in rows], val


def run_ours(work: Path, steps: int, clock: str, seed: int) -> tuple[list[float], list[float], float]:
    """hpcorch's trainer (in a child process: ``--child``); its per-step (loss, seconds) and
    its final validation loss."""
    cmd = [sys.executable, __file__, "--clock", clock, "--seed", str(seed), "--child", str(work), "--steps", str(steps)]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    return rows["loss"], rows["dt"], rows["val_loss"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def nanogpt_child(train_py: str, argv: list[str], clock: str, seed: int) -> None:
    """Run nanoGPT's train.py as its own ``__main__``, timing its loop with ``clock`` (it
    times with ``time.time``; ``cpu`` makes that this process's CPU time) and seeded with
    ``seed`` (it calls ``torch.manual_seed(1337)``: the seed is swapped, its code is not)."""
    import runpy

    import torch

    manual_seed = torch.manual_seed
    torch.manual_seed = lambda s: manual_seed(s - 1337 + seed)
    time.time = CLOCKS[clock]
    sys.argv = [train_py, *argv]
    sys.path.insert(0, str(Path(train_py).parent))
    runpy.run_path(train_py, run_name="__main__")


def child(work: Path, steps: int, clock: str, seed: int) -> None:
    """Train with hpcorch's Trainer on one rank; print the losses and step-to-step times."""
    import logging

    from hpcorch.spec.job import load_job
    from hpcorch.train.distributed import init_distributed
    from hpcorch.train.runlog import Sink
    from hpcorch.train.spawn import free_port
    from hpcorch.train.trainer import Trainer

    logging.getLogger("hpcorch").setLevel(logging.WARNING)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    data = work / "data" / "bench"
    sets = [f"trainer.model.{k}={v}" for k, v in SHAPE.items()]
    sets += [f"trainer.{k}={v}" for k, v in BATCH.items()]
    sets += [f"trainer.optimizer.{k}={v}" for k, v in OPT.items()]
    sets += ["resources.tasks_per_node=1", "resources.cpus_per_task=1", f"trainer.steps={steps}",
             "trainer.data.source=bin", f"trainer.data.path={data / 'train.bin'}",
             f"trainer.data.val_path={data / 'val.bin'}", "trainer.eval_interval=0",
             f"trainer.eval_batches={EVAL_BATCHES}",
             f"trainer.checkpoint.interval={10**9}", "trainer.log_interval=1000", f"trainer.seed={seed}"]
    job = load_job(REPO / "jobs/gpt-tiny.yaml", sets)

    class Clock(Sink):
        def __init__(self):
            self.times, self.losses, self.val_loss = [now()], [], None

        def on_step(self, record: dict) -> None:
            self.times.append(now())
            self.losses.append(record["loss"])

        def on_summary(self, summary: dict) -> None:
            self.val_loss = summary["val_loss"]

    now = CLOCKS[clock]
    clock = Clock()
    trainer = Trainer(job, work / "run", init_distributed(), stop_signals=(), sinks=(clock,))
    clock.times[0] = now()
    trainer.run()
    dts = [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
    print(json.dumps({"loss": clock.losses, "dt": dts, "val_loss": clock.val_loss}))


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("HPCORCH_SAMPLE_TRACE", None)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--nanogpt", default=os.environ.get("NANOGPT_DIR"),
                        help="a nanoGPT checkout (default: $NANOGPT_DIR)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-bytes", type=int, default=4_000_000)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (steadier on a busy machine)")
    parser.add_argument("--seed", type=int, default=1337, help="round r uses seed + r, on both sides")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nanogpt-child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.nanogpt_child:
        return nanogpt_child(args.nanogpt_child, rest, args.clock, args.seed)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.child:
        return child(args.child, args.steps, args.clock, args.seed)
    if not args.nanogpt or not (Path(args.nanogpt) / "train.py").is_file():
        parser.error("give a nanoGPT checkout with --nanogpt or NANOGPT_DIR (git clone https://github.com/karpathy/nanoGPT)")
    nanogpt = Path(args.nanogpt).resolve()

    tail = max(1, args.steps // 5)
    results: dict[str, list[tuple[float, float, float]]] = {"nanogpt": [], "hpcorch": []}
    with tempfile.TemporaryDirectory(prefix="bench-nanogpt-") as tmp:
        write_data(Path(tmp) / "data" / "bench", args.max_bytes)
        for r in range(args.rounds):
            for name in ("nanogpt", "hpcorch"):
                work = Path(tmp) / f"{name}-{r}"
                work.mkdir()
                (work / "data").symlink_to(Path(tmp) / "data")
                seed = args.seed + r
                losses, dts, val = (run_nanogpt(nanogpt, work, args.steps, args.clock, seed) if name == "nanogpt"
                                    else run_ours(work, args.steps, args.clock, seed))
                step = statistics.median(dts[args.skip:])
                loss = statistics.mean(losses[-tail:])
                results[name].append((step, loss, val))
                print(f"round {r + 1} {name:8s} step {step * 1000:7.2f} ms  train loss (last {tail}) {loss:.4f}  "
                      f"val loss {val:.4f}", flush=True)
    # Times: the median over rounds (a busy machine slows some). Losses: the mean over the
    # rounds' seeds (one seed's loss after a few hundred steps varies by several percent).
    ours, theirs = (statistics.median(row[0] for row in results[n]) for n in ("hpcorch", "nanogpt"))
    loss_ours, val_ours = (statistics.mean(col) for col in list(zip(*results["hpcorch"], strict=True))[1:])
    loss_theirs, val_theirs = (statistics.mean(col) for col in list(zip(*results["nanogpt"], strict=True))[1:])
    print(f"step time ({args.clock} clock): hpcorch {ours * 1000:.2f} ms, nanoGPT {theirs * 1000:.2f} ms, "
          f"ratio {ours / theirs:.3f}x (goal <= 1.0x)")
    print(f"train loss (mean of the last {tail} steps, mean over {args.rounds} seeds): "
          f"hpcorch {loss_ours:.4f}, nanoGPT {loss_theirs:.4f}, "
          f"difference {100 * (loss_ours / loss_theirs - 1):+.2f}% (one batch per step: noisy)")
    print(f"val loss ({EVAL_BATCHES} x {BATCH['micro_batch']} sequences of val.bin at the end, mean over seeds): "
          f"hpcorch {val_ours:.4f}, "
          f"nanoGPT {val_theirs:.4f}, difference {100 * (val_ours / val_theirs - 1):+.2f}%")


if __name__ == "__main__":
    main()
