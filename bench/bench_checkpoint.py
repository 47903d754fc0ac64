"""Checkpoint save/load throughput against a raw sequential write (with fsync) and read of the
same number of bytes on the same disk, and the blocking time of an async save against a sync one.

Each rank holds ``--mb`` MiB of state and writes and reads its own shards; with ``--ranks 2`` two
processes (gloo) do it at once, as the ranks of one node do. The baselines run interleaved with
the checkpoint operations (raw write, save, raw read, load, per round), so that a load change
on a shared machine hits both alike; the ratios are of medians (the best round in brackets).

Usage: python bench/bench_checkpoint.py [--mb SIZE] [--ranks N] [--repeat N] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, barrier) -> float:
    """Seconds of ``fn`` on this rank, from a barrier to the slowest rank's end."""
    barrier()
    start = time.perf_counter()
    fn()
    barrier()
    return time.perf_counter() - start


def run(rank: int, world: int, args, root: Path, port: int, out: dict) -> None:
    import torch

    barrier, group = (lambda: None), None
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        group = dist.new_group(backend="gloo")
        barrier = dist.barrier

    from hpcorch.train.checkpoint.store import CheckpointStore

    n = args.mb * 2**20 // 4
    torch.manual_seed(rank)
    # Keys of this rank's own (DCP would write a key every rank holds once, as replicated).
    state = {"model": {f"rank{rank}.layer{i}": torch.randn(n // 8) for i in range(8)}}
    nbytes = sum(t.numel() * 4 for t in state["model"].values())
    blob = os.urandom(nbytes)
    raw = root / f"raw{rank}.bin"

    def raw_write():
        with open(raw, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    sync = CheckpointStore(root / "sync", rank, world, keep=1, group=group)
    target = {"model": {k: torch.empty_like(v) for k, v in state["model"].items()}}
    times: dict[str, list[float]] = {"raw_w": [], "save": [], "raw_r": [], "load": []}
    for step in range(1, args.repeat + 1):
        times["raw_w"].append(timed(raw_write, barrier))
        times["save"].append(timed(lambda step=step: sync.save(step, state, {"rng": rank}, {}), barrier))
        times["raw_r"].append(timed(lambda: raw.read_bytes(), barrier))
        times["load"].append(timed(lambda step=step: sync.load(step, target), barrier))
    assert all(torch.equal(target["model"][k], v) for k, v in state["model"].items())
    asy = CheckpointStore(root / "async", rank, world, keep=1, async_save=True, group=group)
    blocked, total = [], []
    for step in range(1, args.repeat + 1):
        barrier()
        start = time.perf_counter()
        blocked.append(asy.save(step, state, {"rng": rank}, {}))
        asy.wait()
        barrier()
        total.append(time.perf_counter() - start)
    if rank == 0:
        out.update(times=times, nbytes=nbytes, blocked=blocked, total=total)


def _worker(rank, world, args, root, port, queue):
    out: dict = {}
    run(rank, world, args, root, port, out)
    if rank == 0:
        queue.put(out)


def _result(queue, procs) -> dict:
    """Rank 0's figures; exits if a rank died first (instead of waiting for them forever)."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=1)
        except queues.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                sys.exit("a rank failed (its traceback is above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="state size per rank in MiB")
    parser.add_argument("--ranks", type=int, default=1, help="processes writing at once")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="hpcorch-bench-"))
    try:
        if args.ranks == 1:
            out: dict = {}
            run(0, 1, args, root, 0, out)
        else:
            import multiprocessing as mp
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(r, args.ranks, args, root, port, queue))
                     for r in range(args.ranks)]
            for p in procs:
                p.start()
            out = _result(queue, procs)
            for p in procs:
                p.join(timeout=600)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    times, nbytes = out["times"], out["nbytes"]
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    gib = nbytes / 2**30
    print(f"state {nbytes / 2**20:.0f} MiB per rank x {args.ranks} rank(s), {args.repeat} rounds, in {root}")
    print(f"{'operation':<34}{'median s':>9}{'GiB/s':>8}{'x raw':>8}{'(best)':>8}")
    rows = (("raw write + fsync", "raw_w", "raw_w"), ("checkpoint save (sync, committed)", "save", "raw_w"),
            ("raw read", "raw_r", "raw_r"), ("checkpoint load (verified)", "load", "raw_r"))
    for name, key, base in rows:
        print(f"{name:<34}{med[key]:>9.3f}{gib / med[key]:>8.2f}{med[base] / med[key]:>8.2f}"
              f"{best[base] / best[key]:>8.2f}")
    blocked, total = min(out["blocked"]), min(out["total"])
    print(f"async save: blocks {blocked:.3f} s vs sync {med['save']:.3f} s "
          f"({blocked / med['save']:.2f}x); whole async save {total:.3f} s")


if __name__ == "__main__":
    main()
