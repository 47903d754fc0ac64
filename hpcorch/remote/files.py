"""The login node's side of :mod:`hpcorch.remote.sync`: ``python -m hpcorch.remote.files CMD``.

It runs at every sync, so it imports the standard library only (no torch, paramiko, submitit,
nor the rest of hpcorch) and starts in tens of milliseconds.

    manifest DIR [--unless DIGEST] [--exclude PAT]...   DIR's manifest, or "same" if its digest
                                                         is DIGEST (the one-round-trip no-op push)
    receive DIR                 stdin: header (deletions) + tar.gz of changed files
    send DIR                    stdin: the paths wanted and what the caller already holds;
                                stdout: appended bytes or whole files, only of what changed

Answers on stdout start with :data:`MAGIC` (anything a chatty login script printed before it
is skipped) followed by one zlib stream of frames: a kind byte (``J`` JSON, ``D`` data, ``E``
end of a file's data) and an 8-byte big-endian length. Exit codes: :data:`EXIT_NO_SPACE` the
disk is full, :data:`EXIT_REFUSED` unsafe input (a path leaving DIR, a link, a device).
"""
from __future__ import annotations

import argparse
import errno
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import stat
import struct
import sys
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO

MAGIC = b"\x00HPCSYNC1\n"
EXIT_NO_SPACE = 28      # errno ENOSPC's number: the caller says "remote disk full at HOST:DIR"
EXIT_REFUSED = 65       # EX_DATAERR: hostile or malformed input, nothing written
NO_SPACE_MARK = "hpcorch-sync: no space left"
TAIL = 4096             # how much of a file's end identifies it for append detection
CHUNK = 1 << 20
_FRAME = struct.Struct(">cQ")
_TMP_SUFFIX = ".hpcsync-tmp"
PAX_MTIME = "HPCORCH.mtime_ns"  # a tar member's mtime in ns (tar's own field keeps microseconds)
DEFAULT_EXCLUDE = (".git", "__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.egg-info")

# A manifest maps a relative path to [size, mtime_ns, mode] (a regular file) or ["L", target]
# (a symbolic link that stays inside the tree).
Manifest = dict[str, list]


class Refused(Exception):
    """Input that would write outside the tree, through a link, or something not a file."""


# ----- paths -------------------------------------------------------------------------------
def check_relpath(rel: str) -> str:
    """``rel`` if it is a plain relative path (no ``/`` start, no ``..``, ``.`` or empty part,
    no NUL); :class:`Refused` otherwise."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        raise Refused(f"unsafe path {rel!r}")
    return rel


def link_stays_inside(rel: str, target: str) -> bool:
    """Whether link ``rel`` -> ``target`` resolves inside the tree (relative, never above it)."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    return resolved != ".." and not resolved.startswith("../") and not resolved.startswith("/")


def _parent_dirs(root: str, rel: str, create: bool) -> str:
    """The real directory ``rel`` lives in, each component checked to be a directory and not a
    link, so nothing is ever written or removed through a link; created if ``create``."""
    here = root
    for part in rel.split("/")[:-1]:
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            if not create:
                return ""
            os.mkdir(here)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise Refused(f"{rel!r} would go through the link {here!r}")
        if not stat.S_ISDIR(st.st_mode):
            if not create:
                return ""
            os.unlink(here)  # a file where the sender now has a folder
            os.mkdir(here)
    return here


def _excluded(name: str, exclude: Iterable[str]) -> bool:
    return name.endswith(_TMP_SUFFIX) or any(fnmatch.fnmatch(name, p) for p in exclude)


def manifest(root: str, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> Manifest:
    """Every regular file under ``root`` with size, mtime (ns) and permission bits, and every
    link that stays inside ``root`` (others are skipped: a link out of the tree means nothing
    on another machine). Folders are not listed: empty ones do not travel, like git."""
    exclude = tuple(exclude)
    found: Manifest = {}
    root = os.path.expanduser(root)
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _excluded(d, exclude)]
        rel_top = os.path.relpath(top, root)
        prefix = "" if rel_top == "." else rel_top.replace(os.sep, "/") + "/"
        # os.walk lists links to folders among dirs and never descends into them.
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            if _excluded(name, exclude):
                continue
            rel = prefix + name
            try:
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(os.path.join(top, name))
                    if link_stays_inside(rel, target):
                        found[rel] = ["L", target]
                elif stat.S_ISREG(st.st_mode):
                    found[rel] = [st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)]
            except OSError:
                continue  # gone while we looked: the next sync sees what is there then
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    return dict(sorted(found.items()))


def digest(entries: Manifest) -> str:
    """A short fingerprint of a manifest: equal digests mean nothing to send."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def tail_hash(path: str, size: int) -> str:
    """Hash of the last :data:`TAIL` bytes of the first ``size`` bytes of ``path``."""
    with open(path, "rb") as f:
        f.seek(max(0, size - TAIL))
        return hashlib.sha256(f.read(size - max(0, size - TAIL))).hexdigest()[:32]


def expand(root: str, patterns: Iterable[str]) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ``root`` named by ``patterns`` (files, folders taken whole, or glob
    patterns), as (relative path, stat); links are never followed, missing names skipped."""
    seen = set()
    for pattern in patterns:
        for rel in sorted(glob.glob(pattern, root_dir=root)) if glob.has_magic(pattern) else [pattern]:
            check_relpath(rel)
            full = os.path.join(root, rel)
            if os.path.isdir(full) and not os.path.islink(full):
                names = (os.path.relpath(os.path.join(t, n), root) for t, _, fs in os.walk(full) for n in fs)
            else:
                names = iter([rel])
            for name in names:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and name not in seen and not name.endswith(_TMP_SUFFIX):
                    seen.add(name)
                    yield name, st


# ----- framing -----------------------------------------------------------------------------
class FrameWriter:
    """:data:`MAGIC`, then frames in one zlib stream, to a binary file."""

    def __init__(self, out: IO[bytes], level: int = 6):
        self.out, self.z = out, zlib.compressobj(level)
        out.write(MAGIC)

    def frame(self, kind: bytes, data: bytes = b"") -> None:
        self.out.write(self.z.compress(_FRAME.pack(kind, len(data)) + data))

    def json(self, obj) -> None:
        self.frame(b"J", json.dumps(obj, separators=(",", ":")).encode())

    def close(self) -> None:
        self.out.write(self.z.flush())
        self.out.flush()


def read_frames(stream: IO[bytes], skipped: Callable[[bytes], None] | None = None) -> Iterator[tuple[bytes, bytes]]:
    """The frames :class:`FrameWriter` wrote to ``stream``; what came before :data:`MAGIC` is
    handed to ``skipped``. Raises EOFError if the stream ends inside a frame."""
    head = b""
    while MAGIC not in head:
        more = stream.read(CHUNK)
        if not more:
            raise EOFError("no answer from hpcorch.remote.files (nothing after the login scripts' output)")
        head += more
    before, _, rest = head.partition(MAGIC)
    if before and skipped:
        skipped(before)
    z, buf = zlib.decompressobj(), bytearray()

    def chunks():
        yield rest
        while block := stream.read(CHUNK):
            yield block

    pending = chunks()
    while True:
        while len(buf) < _FRAME.size:
            block = next(pending, None)
            if block is None:
                if buf:
                    raise EOFError("answer cut inside a frame")
                return
            buf += z.decompress(block)
        kind, n = _FRAME.unpack_from(buf)
        while len(buf) < _FRAME.size + n:
            block = next(pending, None)
            if block is None:
                raise EOFError("answer cut inside a frame")
            buf += z.decompress(block)
        yield kind, bytes(buf[_FRAME.size:_FRAME.size + n])
        del buf[:_FRAME.size + n]


# ----- writing files -----------------------------------------------------------------------
def write_atomic(path: str, chunks: Iterable[bytes], mode: int | None, mtime_ns: int | None,
                 durable: bool = False) -> str:
    """Write ``chunks`` to a temporary file beside ``path`` with its mode and mtime set, and
    return its name: the caller renames it over ``path`` (the file appears whole or not at
    all) or removes it. A failed write removes its own partial file."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _place(tmp: str, path: str) -> None:
    """Rename ``tmp`` over ``path``; a folder where the sender has a file is replaced whole
    (what is left in it is excluded material, such as ``__pycache__``)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _tar_chunks(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    src = tar.extractfile(member)
    assert src is not None
    while block := src.read(CHUNK):
        yield block


def receive(root: str, stream: IO[bytes]) -> dict:
    """Apply a push: the header's deletions, then every file of the tar.gz that follows,
    each staged to a temporary file and renamed only once all are staged, so a full disk or a
    refused member leaves every file as it was or whole, never half-written."""
    root = os.path.expanduser(root)
    os.makedirs(root, exist_ok=True)
    (n,) = struct.unpack(">Q", stream.read(8))
    header = json.loads(zlib.decompress(stream.read(n)))
    doomed = [check_relpath(rel) for rel in header.get("delete", [])]
    deleted = 0
    for rel in doomed:
        parent = _parent_dirs(root, rel, create=False)
        path = os.path.join(parent, os.path.basename(rel))
        if parent and os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)):
            os.unlink(path)
            deleted += 1
            _prune(root, os.path.dirname(rel))
    staged: list[tuple[str, str]] = []
    written = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                rel = check_relpath(member.name)
                path = os.path.join(_parent_dirs(root, rel, create=True), os.path.basename(rel))
                if member.isreg():
                    mtime = int(member.pax_headers.get(PAX_MTIME, 0)) or int(member.mtime * 10**9)
                    staged.append((write_atomic(path, _tar_chunks(tar, member), member.mode & 0o7777, mtime), path))
                    written += member.size
                elif member.issym():
                    if not link_stays_inside(rel, member.linkname):
                        raise Refused(f"link {rel!r} -> {member.linkname!r} leaves the tree")
                    tmp = path + f".{os.getpid()}{_TMP_SUFFIX}"
                    _remove(tmp)
                    os.symlink(member.linkname, tmp)
                    staged.append((tmp, path))
                else:
                    raise Refused(f"{rel!r} is not a regular file or a link")
        for tmp, path in staged:
            _place(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise
    return {"files": len(staged), "bytes": written, "deleted": deleted}


def _prune(root: str, rel_dir: str) -> None:
    """Remove folders left empty by deletions, up to (not including) ``root``."""
    while rel_dir:
        try:
            os.rmdir(os.path.join(root, rel_dir))
        except OSError:
            return
        rel_dir = os.path.dirname(rel_dir)


# ----- sending files (pull) ----------------------------------------------------------------
def send(root: str, request: dict, out: FrameWriter) -> None:
    """For each file named by ``request["paths"]``: nothing if the caller's copy
    (``request["have"]``: path -> [size, mtime_ns, tail hash or None]) is current; the bytes
    after its size if the file grew by appending (its tail hash still matches); else the whole
    file. Files the caller holds that are gone here are left to it (a cleaned run directory
    must not wipe the laptop's copy)."""
    root = os.path.expanduser(root)
    have = request.get("have", {})
    sent = 0
    for rel, st in expand(root, request.get("paths", [])):
        mine = have.get(rel)
        if mine and mine[0] == st.st_size and mine[1] == st.st_mtime_ns:
            continue
        path, offset = os.path.join(root, rel), 0
        try:
            with open(path, "rb") as f:
                now = os.fstat(f.fileno())  # size and mtime together: a growing log is cut here
                size = now.st_size
                if mine and mine[2] and 0 < mine[0] <= size and tail_hash(path, mine[0]) == mine[2]:
                    offset = mine[0]
                f.seek(offset)
                out.json({"path": rel, "offset": offset, "mtime_ns": now.st_mtime_ns,
                          "mode": stat.S_IMODE(now.st_mode)})
                left = size - offset
                while left > 0 and (block := f.read(min(CHUNK, left))):
                    out.frame(b"D", block)
                    left -= len(block)
                    sent += len(block)
                out.frame(b"E")
        except FileNotFoundError:
            continue
    out.json({"done": True, "bytes": sent})


# ----- command line ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (errors are one line on stderr, no traceback)."""
    parser = argparse.ArgumentParser(prog="python -m hpcorch.remote.files", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("dir")
    m.add_argument("--unless", default=None)
    m.add_argument("--exclude", action="append", default=None)
    sub.add_parser("receive").add_argument("dir")
    sub.add_parser("send").add_argument("dir")
    args = parser.parse_args(argv)
    out = sys.stdout.buffer
    try:
        if args.cmd == "manifest":
            entries = manifest(args.dir, DEFAULT_EXCLUDE if args.exclude is None else args.exclude)
            writer = FrameWriter(out)
            writer.json({"same": True} if digest(entries) == args.unless else {"same": False, "entries": entries})
            writer.close()
        elif args.cmd == "receive":
            writer = FrameWriter(out)
            writer.json(receive(args.dir, sys.stdin.buffer))
            writer.close()
        else:
            request = json.loads(zlib.decompress(sys.stdin.buffer.read()))
            writer = FrameWriter(out)
            send(args.dir, request, writer)
            writer.close()
    except Refused as exc:
        print(f"hpcorch-sync: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"{NO_SPACE_MARK} on device ({exc.strerror}) writing under {args.dir}", file=sys.stderr)
            return EXIT_NO_SPACE
        print(f"hpcorch-sync: {exc}", file=sys.stderr)
        return 1
    except (ValueError, EOFError, tarfile.TarError, struct.error, zlib.error) as exc:
        print(f"hpcorch-sync: malformed input: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
