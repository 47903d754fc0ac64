"""Training on prepared, sharded, mixed data against today's single ``.bin`` file.

1. Step time: two trainers of the same tiny model in this process (one rank, gloo), one reading
   a single uint16 ``.bin`` (``source: bin``), one a mixture of three prepared datasets in
   several shards each (uint16 and int32, weights 5:3:2). Their steps are interleaved after
   warm-up; the ratio of medians is printed (goal: <= 1.02).
2. Memory: a child process per corpus size opens a prepared dataset of 10 MB or 1 GB of uint16
   tokens and builds ``--mem-steps`` steps of batches; it reports its peak resident memory
   (VmHWM) and its private part (RssAnon), against the same for ``source: bin`` on a 1 GB file,
   whose sample order holds a permutation of every sample (8 bytes each). The 1 GB files are
   sparse (no disk written, pages read back as zeros: the reading is the same) and deleted after.

Usage: python bench/bench_data.py [--steps N] [--mem-steps N] [--seq-len T]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpcorch.data.format import ShardInfo, ShardWriter, index_bytes  # noqa: E402
from hpcorch.data.index import DatasetIndex, TokenizerRef  # noqa: E402

BYTES = TokenizerRef("bench-bytes", "00" * 32, 256, 255)


def write_real(folder: Path, tokens: int, seed: int, dtype: str, shards: int) -> Path:
    """A dataset of random documents (ids < 255, then EOT 255) in ``shards`` shards."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    infos, per = [], tokens // shards
    for i in range(shards):
        with ShardWriter(folder / f"shard_{i:05d}", dtype) as w:
            left = per
            while left > 0:
                n = min(left, int(rng.integers(200, 3000)))
                w.add(np.append(rng.integers(0, 255, n - 1), 255))
                left -= n
        infos.append(w.info)
    DatasetIndex(tokenizer=BYTES, dtype=dtype, shards=infos).save(folder)
    return folder


def write_sparse(folder: Path, tokens: int, doc_len: int = 1000, shards: int = 8) -> Path:
    """A dataset of ``tokens`` uint16 tokens in documents of ``doc_len``, its ``.bin`` files
    sparse: sized by truncate, nothing written."""
    folder.mkdir(parents=True)
    infos, per = [], tokens // shards
    for i in range(shards):
        prefix = folder / f"shard_{i:05d}"
        with open(prefix.with_suffix(".bin"), "wb") as f:
            f.truncate(per * 2)
        lengths = np.full(per // doc_len, doc_len, dtype=np.int32)
        lengths[-1] += per - int(lengths.sum())
        prefix.with_suffix(".idx").write_bytes(index_bytes(lengths, np.dtype(np.uint16)))
        infos.append(ShardInfo(prefix.name, per, len(lengths), "sparse"))
    DatasetIndex(tokenizer=BYTES, dtype="uint16", shards=infos).save(folder)
    return folder


# ----- 1. step time ---------------------------------------------------------------------------
def step_times(root: Path, steps: int) -> None:
    import torch

    from hpcorch.spec.job import load_job
    from hpcorch.train.distributed import init_distributed
    from hpcorch.train.spawn import free_port
    from hpcorch.train.trainer import Trainer

    bin_path = root / "train.bin"
    np.random.default_rng(0).integers(0, 256, 4_000_000).astype(np.uint16).tofile(bin_path)
    mix = [write_real(root / "web", 2_000_000, 1, "uint16", 4), write_real(root / "code", 1_000_000, 2, "int32", 3),
           write_real(root / "books", 1_000_000, 3, "uint16", 2)]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env = init_distributed()
    base = ["resources.tasks_per_node=1", "trainer.checkpoint.interval=100000"]
    mixed = ("trainer.data={source: prepared, mix: [" +
             ", ".join(f"{{path: {p}, weight: {w}}}" for p, w in zip(mix, (5, 3, 2), strict=True)) + "]}")
    single = f"trainer.data={{source: bin, path: {bin_path}}}"
    jobs = {"single .bin": load_job(REPO / "jobs/gpt-tiny.yaml", [*base, single]),
            "prepared mixture": load_job(REPO / "jobs/gpt-tiny.yaml", [*base, mixed])}
    trainers = {k: Trainer(j, root / k.replace(" ", "_"), env, stop_signals=()) for k, j in jobs.items()}
    for t in trainers.values():
        t.parallel.train()
    for _ in range(5):
        for t in trainers.values():
            t.train_step()
    times = {k: [] for k in trainers}
    for _ in range(steps):
        for k, t in trainers.items():
            start = time.perf_counter()
            t.train_step()
            times[k].append(time.perf_counter() - start)
    # The data alone: building one step's batches (what the prefetch thread does off the step).
    build = {k: [] for k in trainers}
    for rep in range(200):
        for k, t in trainers.items():
            start = time.perf_counter()
            t.batches.build(rep * t.tr.global_batch)
            build[k].append(time.perf_counter() - start)
    for t in trainers.values():
        t.batches.close()
    tr = jobs["single .bin"].trainer
    print(f"step time: gpt-tiny ({tr.global_batch} x {tr.model.seq_len} tokens/step), one rank, "
          f"{steps} interleaved steps, torch threads {torch.get_num_threads()}")
    print(f"{'data':<20}{'median step s':>14}{'ratio':>8}{'batch build ms':>16}{'ratio':>8}")
    ref, ref_build = statistics.median(times["single .bin"]), statistics.median(build["single .bin"])
    for k, ts in times.items():
        b = statistics.median(build[k])
        print(f"{k:<20}{statistics.median(ts):>14.4f}{statistics.median(ts) / ref:>8.3f}{b * 1e3:>16.3f}"
              f"{b / ref_build:>8.2f}")


# ----- 2. memory ------------------------------------------------------------------------------
CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from hpcorch.spec.data import DataSpec
from hpcorch.train.data import DataSource
from hpcorch.train.prefetch import StepBatches

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out

source, path, steps, seq = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
before = status()
data = DataSource(DataSpec(source=source, path=path), seq_len=seq, seed=1)
with StepBatches(data.train, 0, 1, 16, 8, "cpu") as sb:
    for step in range(steps):
        sb.get(step * 16)
print(json.dumps({"samples": data.train.num_samples, "before": before, "after": status()}))
"""


def memory(root: Path, steps: int, seq_len: int) -> None:
    cases = [("prepared", "10 MB", write_sparse(root / "small", 5_000_000)),
             ("prepared", "1 GB", write_sparse(root / "large", 500_000_000))]
    big_bin = root / "large.bin"
    with open(big_bin, "wb") as f:
        f.truncate(1_000_000_000)
    cases.append(("bin", "1 GB", big_bin))
    print(f"\nmemory of one rank: {steps} steps of 16 x {seq_len} tokens read (MB; anon = private; "
          "file = mapped file pages, shared and reclaimable: libraries and the windows read; "
          "hwm = peak resident)")
    print(f"{'source':<10}{'tokens':>8}{'samples':>12}{'anon':>9}{'file':>9}{'hwm':>9}{'anon growth':>13}")
    rows = {}
    for source, size, path in cases:
        out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), source, str(path), str(steps), str(seq_len)],
                             capture_output=True, text=True, timeout=900, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows[(source, size)] = got
        a = got["after"]
        print(f"{source:<10}{size:>8}{got['samples']:>12,}{a['RssAnon']:>9.1f}{a['RssFile']:>9.1f}{a['VmHWM']:>9.1f}"
              f"{a['RssAnon'] - got['before']['RssAnon']:>13.1f}")
    small, large = rows[("prepared", "10 MB")]["after"], rows[("prepared", "1 GB")]["after"]
    print(f"prepared, 1 GB / 10 MB: anon {large['RssAnon'] / small['RssAnon']:.3f}x, "
          f"peak {large['VmHWM'] / small['VmHWM']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mem-steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--skip-steps", action="store_true", help="only the memory part")
    args = parser.parse_args()
    free = shutil.disk_usage(tempfile.gettempdir()).free
    print(f"{tempfile.gettempdir()}: {free / 1e9:.0f} GB free (the 1 GB files are sparse)")
    root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        memory(root, args.mem_steps, args.seq_len)
        if not args.skip_steps:
            step_times(root, args.steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
