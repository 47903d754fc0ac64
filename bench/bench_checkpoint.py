"""Checkpoint save/load throughput against a raw sequential write (with fsync) and read of the
same number of bytes on the same disk, and the blocking time of an async save against a sync one.
One process (one rank's share: every rank writes and reads its own shards in parallel).

Usage: python bench/bench_checkpoint.py [--mb SIZE] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="state size in MiB")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import hashlib

    import torch

    from hpcorch.train.checkpoint.store import CheckpointStore

    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="hpcorch-bench-"))
    n = args.mb * 2**20 // 4
    state = {"model": {f"layer{i}": torch.randn(n // 8) for i in range(8)}}
    nbytes = sum(t.numel() * 4 for t in state["model"].values())
    blob = os.urandom(nbytes)

    def raw_write(path):
        with open(path, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    def best(fn):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    raw_w = best(lambda: raw_write(root / "raw.bin"))
    raw_r = best(lambda: (root / "raw.bin").read_bytes())
    sha_s = best(lambda: hashlib.sha256(blob).digest())
    sync = CheckpointStore(root / "sync", 0, 1, keep=1)
    steps = iter(range(1, 1000))
    save_s = best(lambda: sync.save(next(steps), state, {"rng": 0}, {}))
    step = sync.committed_steps()[-1]
    target = {"model": {k: torch.empty_like(v) for k, v in state["model"].items()}}
    load_s = best(lambda: sync.load(step, target))
    assert all(torch.equal(target["model"][k], v) for k, v in state["model"].items())
    asy = CheckpointStore(root / "async", 0, 1, keep=1, async_save=True)
    blocked, total = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        blocked.append(asy.save(next(steps), state, {"rng": 0}, {}))
        asy.wait()
        total.append(time.perf_counter() - start)
    gib = nbytes / 2**30
    print(f"state {nbytes / 2**20:.0f} MiB in {root}")
    print(f"{'operation':<34}{'seconds':>9}{'GiB/s':>8}{'x raw':>8}")
    print(f"{'raw write + fsync':<34}{raw_w:>9.3f}{gib / raw_w:>8.2f}{1:>8.2f}")
    print(f"{'checkpoint save (sync, committed)':<34}{save_s:>9.3f}{gib / save_s:>8.2f}{raw_w / save_s:>8.2f}")
    print(f"{'raw read':<34}{raw_r:>9.3f}{gib / raw_r:>8.2f}{1:>8.2f}")
    print(f"{'checkpoint load (verified)':<34}{load_s:>9.3f}{gib / load_s:>8.2f}{raw_r / load_s:>8.2f}")
    print(f"{'(SHA-256 of the same bytes)':<34}{sha_s:>9.3f}{gib / sha_s:>8.2f}")
    print(f"async save: blocks {min(blocked):.3f} s vs sync {save_s:.3f} s "
          f"({min(blocked) / save_s:.2f}x); whole async save {min(total):.3f} s")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
