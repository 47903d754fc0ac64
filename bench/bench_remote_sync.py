"""Incremental push of a code tree (issue 12): bytes and time of a first push, an unchanged
re-push and a one-file change, against copying the whole tree again, measured in this run.

A 10,000-file tree of code-like text (1-16 KiB per file, ~85 MB) is pushed with
hpcorch.remote.sync through a Runner. Byte counts are channel payload (what an SSH channel
carries: stdout + stderr received, stdin sent) plus the command lines themselves. Baselines in
the same run: `tar c | tar x` of the whole tree (what a sync without a manifest moves every
time; its byte figure is the tar stream, and the gzipped stream), and `rsync -az` (first and
unchanged; its own --stats byte counts) when rsync is installed.

With LocalRunner the "remote" is another folder on this machine (bash -c, no sshd): the byte
counts are those an SSH channel would carry, the times are lower bounds (no network, no
encryption). The lead reruns it through the loopback sshd with --ssh.

Usage: python bench/bench_remote_sync.py [--files N] [--keep DIR]
"""
from __future__ import annotations

import argparse
import gzip
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # the "remote" python too

WORDS = ["def", "class", "return", "self", "import", "from", "for", "in", "if", "else", "elif", "while", "with", "as",
         "try", "except", "raise", "yield", "lambda", "None", "True", "False", "torch", "tensor", "model", "layer",
         "batch", "loss", "step", "optimizer", "config", "path", "value", "result", "data", "index", "shape", "device",
         "grad", "weight", "bias", "forward", "backward", "init", "update", "log"]


def corpus(rng: random.Random, size: int) -> bytes:
    """Code-like text: indented lines of identifiers and literals (gzip shrinks it ~3-4x, as real code)."""
    lines, total = [], 0
    while total < size:
        line = " " * 4 * rng.randint(0, 3) + " ".join(
            rng.choice(WORDS) if rng.random() < 0.7 else f"{rng.choice(WORDS)}_{rng.randint(0, 999)}"
            for _ in range(rng.randint(2, 12))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def build_tree(root: Path, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    text = corpus(rng, 4 << 20)
    total = 0
    for i in range(n):
        path = root / f"pkg{i % 40}" / f"sub{i % 7}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1024, 16 * 1024)
        start = rng.randrange(0, len(text) - size)
        data = f"# module {i}\n".encode() + text[start:start + size]
        path.write_bytes(data)
        total += len(data)
    return total


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def wire(stats, lines: int) -> int:
    return stats.bytes_in + stats.bytes_out + lines


def rsync_bytes(src: Path, dst: Path) -> tuple[int, float]:
    out, wall = timed(lambda: subprocess.run(["rsync", "-az", "--stats", f"{src}/", f"{dst}/"],
                                             capture_output=True, text=True, check=True).stdout)
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
    received = int(re.search(r"Total bytes received: ([\d,]+)", out).group(1).replace(",", ""))
    return sent + received, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, default=None, help="build the trees here and keep them")
    args = parser.parse_args()

    from hpcorch.remote import sync
    from hpcorch.remote.client import remote_command

    work = Path(tempfile.mkdtemp(prefix="bench-sync-", dir=args.keep))
    src, dst = work / "src", work / "dst"
    total, build_s = timed(lambda: build_tree(src, args.files))
    print(f"tree: {args.files} files, {total / 1e6:.1f} MB (built in {build_s:.1f} s) under {work}")
    runner = sync.LocalRunner()
    line = len(remote_command([runner.python, "-m", "hpcorch.remote.files", "manifest", str(dst), "--unless",
                                "0" * 32, *(f"--exclude={p}" for p in sync.DEFAULT_EXCLUDE)]))
    receive_line = len(remote_command([runner.python, "-m", "hpcorch.remote.files", "receive", str(dst)]))

    first, first_s = timed(lambda: sync.push(runner, src, str(dst)))
    again, again_s = timed(lambda: sync.push(runner, src, str(dst)))
    edited = src / "pkg3" / "sub3" / "module_3.py"
    edited.write_bytes(edited.read_bytes() + b"# one more line\n")
    one, one_s = timed(lambda: sync.push(runner, src, str(dst)))
    assert again.round_trips == 1 and one.files_sent == 1

    rows = [("hpcorch push, first", first_s, wire(first, line + receive_line), first.round_trips),
            ("hpcorch push, unchanged", again_s, wire(again, line), again.round_trips),
            ("hpcorch push, one file changed", one_s, wire(one, line + receive_line), one.round_trips)]

    tar_dst = work / "tar-dst"
    tar_dst.mkdir()
    _, tar_s = timed(lambda: subprocess.run(f"tar c -C {src} . | tar x -C {tar_dst}", shell=True, check=True))
    stream = subprocess.run(["tar", "c", "-C", str(src), "."], capture_output=True, check=True).stdout
    rows.append(("tar c | tar x, whole tree", tar_s, len(stream), 1))
    rows.append(("  same stream gzipped (-6)", float("nan"), len(gzip.compress(stream, 6)), 1))
    if shutil.which("rsync"):
        rs_dst = work / "rsync-dst"
        rs_first, rs_first_s = rsync_bytes(src, rs_dst)
        rs_again, rs_again_s = rsync_bytes(src, rs_dst)
        rows += [("rsync -az, first", rs_first_s, rs_first, 1), ("rsync -az, unchanged", rs_again_s, rs_again, 1)]

    print(f"{'case':<34}{'wall s':>8}{'bytes':>14}{'% of tree':>11}{'round trips':>13}")
    for name, wall, moved, trips in rows:
        print(f"{name:<34}{wall:>8.2f}{moved:>14,}{100 * moved / total:>10.3f}%{trips:>13}")
    ratio = wire(again, line) / total
    print(f"unchanged re-push / tree bytes = {100 * ratio:.4f} % (goal < 1 %): {'ok' if ratio < 0.01 else 'MISSED'}")
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
