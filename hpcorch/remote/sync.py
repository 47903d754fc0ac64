"""Incremental file transfer to and from the login node, over any :class:`Runner`.

``push`` (a code tree to the login node) costs one round trip when nothing changed: the local
manifest's digest goes out with ``manifest --unless DIGEST`` and the answer is "same". Otherwise
the remote manifest comes back (compressed), and one ``receive`` carries a tar.gz of the files
that differ (size, mtime in ns, permission bits, or a link's target) and the list of files gone
locally. The remote side keeps each file's mtime and mode, so its next manifest matches ours.

``pull`` (a run directory's observable files to the laptop) sends what the laptop holds
(size, mtime, a hash of the last 4 KiB of append-only files); the answer carries nothing for
unchanged files, only the new bytes of a file that grew by appending, the whole of any other
changed file. Checkpoints never travel.

Symbolic links in a pushed tree that stay inside it are recreated as links; links out of the
tree are skipped (their target means nothing on the login node). Empty folders do not travel.

A Runner is anything with ``python: str`` and ``run(argv, stdin=..., on_stdout=...) ->
Completed``: :class:`hpcorch.remote.client.Session` over SSH, or :class:`LocalRunner` here.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, BinaryIO, Protocol

from hpcorch.errors import HpcorchError, RemoteError
from hpcorch.remote import files
from hpcorch.remote.client import Completed, remote_command
from hpcorch.remote.files import DEFAULT_EXCLUDE, Manifest
from hpcorch.state.rundir import RunDir

log = logging.getLogger(__name__)
_SPOOL = 32 << 20  # the tar of a push is spooled in memory up to this, then on disk
# gzip level of a push's tar. On a 10,000-file code tree (bench/bench_remote_sync.py) level 1
# packs in a third of level 6's time for 25 % more bytes: it wins above ~1.5 MB/s of upload.
COMPRESS_LEVEL = 1


class Runner(Protocol):
    python: str

    def run(self, argv: list[str] | str, stdin: bytes | BinaryIO | None = None,
            on_stdout: Callable[[bytes], None] | None = None,
            on_stderr: Callable[[bytes], None] | None = None,
            cwd: str | None = None) -> Completed: ...


@dataclass
class SyncStats:
    """What one push or pull moved. ``bytes_sent``: file content (uncompressed) that moved;
    ``bytes_in``/``bytes_out``: channel payload received/sent, what the network carried."""

    files_sent: int = 0
    bytes_sent: int = 0
    files_deleted: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    round_trips: int = 0
    files_appended: int = 0

    def add(self, done: Completed) -> None:
        self.bytes_in += done.bytes_in
        self.bytes_out += done.bytes_out
        self.round_trips += 1


class RemoteDiskFull(RemoteError):
    """The login node's file system is full (or the user's quota spent)."""


class LocalRunner:
    """Runs a command's shell line with ``bash -c`` on this machine and counts bytes as an SSH
    channel would (stdout + stderr received, stdin sent): tests and benchmarks of sync without
    sshd."""

    host = "localhost"

    def __init__(self, python: str = sys.executable):
        self.python = python

    def run(self, argv: list[str] | str, stdin: bytes | BinaryIO | None = None,
            on_stdout: Callable[[bytes], None] | None = None,
            on_stderr: Callable[[bytes], None] | None = None,
            cwd: str | None = None) -> Completed:
        """Run ``argv`` and return its exit code, output (unless streamed) and byte counts."""
        proc = subprocess.Popen(["bash", "-c", remote_command(argv, cwd)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        counts, kept = [0, 0], [bytearray(), bytearray()]

        def drain(i: int, pipe: IO[bytes], sink) -> None:
            while block := pipe.read1(1 << 16):  # type: ignore[attr-defined]
                counts[i] += len(block)
                sink(block) if sink else kept[i].extend(block)

        readers = [threading.Thread(target=drain, args=(i, p, s), daemon=True)
                   for i, (p, s) in enumerate(((proc.stdout, on_stdout), (proc.stderr, on_stderr)))]
        for t in readers:
            t.start()
        sent = 0
        source = stdin if stdin is None or not isinstance(stdin, bytes) else _BytesSource(stdin)
        try:
            while source is not None and (block := source.read(1 << 16)):
                proc.stdin.write(block)  # type: ignore[union-attr]
                sent += len(block)
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # the command ended without reading all of it (a full disk): its code says why
        code = proc.wait()
        for t in readers:
            t.join()
        return Completed(code, bytes(kept[0]), bytes(kept[1]), counts[0] + counts[1], sent)


class _BytesSource:
    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def read(self, n: int) -> bytes:
        block = bytes(self.data[self.pos:self.pos + n])
        self.pos += len(block)
        return block


def _files_cmd(runner: Runner, *args: str) -> list[str]:
    return [runner.python, "-m", "hpcorch.remote.files", *args]


def _host(runner: Runner) -> str:
    return getattr(runner, "host", "the login node")


def _fail(runner: Runner, what: str, remote_dir: str, done: Completed) -> None:
    """Raise the error a failed files command deserves: a full disk names HOST:DIR."""
    detail = done.stderr.decode(errors="replace").strip().splitlines()
    last = detail[-1] if detail else f"exit code {done.code}"
    if done.code == files.EXIT_NO_SPACE:
        raise RemoteDiskFull(f"remote disk full at {_host(runner)}:{remote_dir} ({last}); free space "
                             f"or quota there (or point login.workdir elsewhere), then retry")
    if done.code == 127:
        raise RemoteError(f"{_host(runner)}: {runner.python} not found; set login.python to the "
                          f"interpreter where hpcorch is installed")
    raise RemoteError(f"{what} {_host(runner)}:{remote_dir} failed: {last}")


def _answer(stdout: bytes | IO[bytes]) -> Iterable[tuple[bytes, bytes]]:
    stream = stdout if not isinstance(stdout, bytes) else _BytesSource(stdout)
    return files.read_frames(stream, skipped=lambda junk: log.debug(  # type: ignore[arg-type]
        "skipped %d bytes the login scripts printed before the answer", len(junk)))


@contextmanager
def _understood(runner: Runner, remote_dir: str) -> Iterator[None]:
    """An answer we cannot read (cut, garbled, unsafe paths) becomes one RemoteError line."""
    try:
        yield
    except (EOFError, ValueError, KeyError, TypeError, StopIteration, zlib.error, files.Refused) as exc:
        raise RemoteError(f"{_host(runner)}:{remote_dir}: unexpected answer from hpcorch.remote.files "
                          f"({exc}); is the login node's hpcorch the same version as this one?") from exc


def _same(mine: list, theirs: list) -> bool:
    """Whether a remote entry matches ours. A file's mtime counts as equal at the precision
    the remote file system keeps (some keep microseconds or whole seconds only)."""
    if mine[0] == "L" or theirs[0] == "L":
        return mine == theirs
    if mine[0] != theirs[0] or mine[2] != theirs[2]:
        return False
    return any(theirs[1] % unit == 0 and mine[1] - mine[1] % unit == theirs[1] for unit in (1, 1000, 10**9))


def push(runner: Runner, local_dir: str | os.PathLike, remote_dir: str,
         exclude: Iterable[str] = DEFAULT_EXCLUDE) -> SyncStats:
    """Make ``remote_dir`` on the login node hold what ``local_dir`` holds (files, modes,
    mtimes, links inside the tree), moving only files that changed and deleting files gone
    locally. Excluded names are neither sent nor deleted there. Raises :class:`RemoteDiskFull`
    or :class:`RemoteError`."""
    local_dir, exclude = os.fspath(local_dir), list(exclude)
    if not os.path.isdir(local_dir):  # an empty manifest would delete everything there
        raise HpcorchError(f"{local_dir}: not a directory; nothing pushed")
    stats = SyncStats()
    mine = files.manifest(local_dir, exclude)
    wanted = [f"--exclude={p}" for p in exclude] or ["--exclude="]
    done = runner.run(_files_cmd(runner, "manifest", remote_dir, "--unless", files.digest(mine), *wanted))
    stats.add(done)
    if done.code != 0:
        _fail(runner, "reading", remote_dir, done)
    with _understood(runner, remote_dir):
        reply = json.loads(next(iter(_answer(done.stdout)))[1])
        theirs: Manifest = {} if reply["same"] else reply["entries"]
    if reply["same"]:
        log.debug("push %s -> %s: nothing changed", local_dir, remote_dir)
        return stats
    changed = [rel for rel, entry in mine.items() if rel not in theirs or not _same(entry, theirs[rel])]
    gone = [rel for rel in theirs if rel not in mine]
    if not changed and not gone:  # equal at the remote's mtime precision (a file system keeping seconds)
        log.debug("push %s -> %s: nothing changed (digests differ by mtime precision only)", local_dir, remote_dir)
        return stats
    with tempfile.SpooledTemporaryFile(_SPOOL) as spool:
        count, sent = _pack(local_dir, changed, spool, gone)
        spool.seek(0)
        done = runner.run(_files_cmd(runner, "receive", remote_dir), stdin=spool)  # type: ignore[arg-type]
    stats.add(done)
    if done.code != 0:
        _fail(runner, "writing", remote_dir, done)
    stats.files_sent, stats.bytes_sent, stats.files_deleted = count, sent, len(gone)
    log.info("push %s -> %s:%s: %d files (%d bytes) sent, %d deleted", local_dir, _host(runner),
             remote_dir, count, sent, len(gone))
    return stats


def _pack(local_dir: str, changed: list[str], out: IO[bytes], gone: list[str]) -> tuple[int, int]:
    """Write receive's input to ``out``: a header (the deletions) then a tar.gz of the changed
    files, each with its mtime in ns in a PAX record (tar's own field loses the nanoseconds
    the next manifest compares). Returns (files, content bytes)."""
    header = zlib.compress(json.dumps({"delete": gone}).encode())
    out.write(struct.pack(">Q", len(header)) + header)
    count = sent = 0
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel in changed:
            path = os.path.join(local_dir, rel)
            try:
                if os.path.islink(path):
                    info = tarfile.TarInfo(rel)
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                    tar.addfile(info)
                    count += 1
                    continue
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())  # what is packed, as it is packed
                    info = tarfile.TarInfo(rel)
                    info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o7777, st.st_mtime
                    info.pax_headers = {files.PAX_MTIME: str(st.st_mtime_ns)}
                    tar.addfile(info, f)
            except FileNotFoundError:
                continue  # gone since the manifest: the next push deletes it there
            count += 1
            sent += st.st_size
    return count, sent


def observable_paths(run: RunDir | None = None) -> list[str]:
    """What ``hpcorch pull`` fetches of a run directory, relative to it, in RunDir's names: the
    job, metrics, events, progress, restarts, summary, failures, exit records, health reports,
    run manifests, the batch logs and the ranks' logs. Never checkpoints nor submitit's pickles."""
    run = run or RunDir("/run")
    names = [run.job_file, run.metrics, run.events, run.progress_file, run.restarts_file,
             run.summary_file, run.failures, run.logs, run.exit_record(0, 0).parent.parent,
             run.health_dir(0).parent, run.manifests]
    rel = [os.path.relpath(p, run.root) for p in names]
    rank_logs = [os.path.relpath(run.rank_log_pattern(s), run.root).replace("%j", "*").replace("%t", "*")
                 for s in ("out", "err")]
    return rel + rank_logs


def _append_only(rel: str) -> bool:
    """Files only ever appended to: logs and JSON-lines records. Others (summary.json,
    progress.json) are rewritten whole and re-fetched whole when they change."""
    return rel.endswith((".jsonl", ".log", ".out", ".err"))


def pull(runner: Runner, remote_dir: str, local_dir: str | os.PathLike,
         paths: list[str] | None = None) -> SyncStats:
    """Bring ``paths`` (files, folders or glob patterns relative to ``remote_dir``; default
    :func:`observable_paths`) from the login node into ``local_dir``, moving only new bytes:
    the appended part of a grown log, the whole of another changed file, nothing for the rest.
    Local files are replaced atomically; appends are fsynced before the mtime is recorded."""
    local_dir = os.fspath(local_dir)
    paths = observable_paths() if paths is None else paths
    stats = SyncStats()
    have = {}
    for rel, st in files.expand(local_dir, paths) if os.path.isdir(local_dir) else ():
        tail = files.tail_hash(os.path.join(local_dir, rel), st.st_size) if _append_only(rel) else None
        have[rel] = [st.st_size, st.st_mtime_ns, tail]
    request = zlib.compress(json.dumps({"paths": paths, "have": have}).encode())
    with tempfile.SpooledTemporaryFile(_SPOOL) as spool:
        done = runner.run(_files_cmd(runner, "send", remote_dir), stdin=request, on_stdout=spool.write)
        stats.add(done)
        if done.code != 0:
            _fail(runner, "reading", remote_dir, done)
        spool.seek(0)
        with _understood(runner, remote_dir):
            _apply(local_dir, _answer(spool), stats)  # type: ignore[arg-type]
    log.info("pull %s:%s -> %s: %d files (%d appended), %d bytes", _host(runner), remote_dir, local_dir,
             stats.files_sent, stats.files_appended, stats.bytes_sent)
    return stats


def _apply(local_dir: str, frames: Iterable[tuple[bytes, bytes]], stats: SyncStats) -> None:
    """Write what ``send`` answered: whole files atomically, appends at the offset we held."""
    frames = iter(frames)
    for _kind, data in frames:
        head = json.loads(data)
        if head.get("done"):
            return
        rel = files.check_relpath(head["path"])
        path = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)

        def content():
            for k, block in frames:
                if k == b"E":
                    return
                stats.bytes_sent += len(block)
                yield block
            raise EOFError(f"answer cut inside {rel}")  # noqa: B023 (consumed in this turn)

        if head["offset"] == 0:
            os.replace(files.write_atomic(path, content(), None, head["mtime_ns"], durable=True), path)
        else:
            with open(path, "r+b") as f:
                f.truncate(head["offset"])  # never past what we told the remote we hold
                f.seek(head["offset"])
                try:
                    for block in content():
                        f.write(block)
                except BaseException:
                    f.truncate(head["offset"])  # a cut append leaves what we had, not a part
                    raise
                f.flush()
                os.fsync(f.fileno())
            os.utime(path, ns=(head["mtime_ns"], head["mtime_ns"]))
            stats.files_appended += 1
        stats.files_sent += 1
    raise EOFError("answer ended before its last frame")
