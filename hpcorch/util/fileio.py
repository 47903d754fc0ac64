"""Files that survive crashes and reads that tolerate their absence: :func:`atomic_write` is
the one way hpcorch writes a file that must be whole (old or new, never a part)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from hpcorch.util.diskspace import DiskFull


def hostname() -> str:
    """This machine's name, as ``socket.gethostname()`` (both are the kernel's nodename on POSIX)
    without importing socket, which a cold CLI command would pay for."""
    return os.uname().nodename


_HOST = hostname().split(".")[0]


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_name(path: Path) -> Path:
    """``path``'s temporary name for this writer, ``NAME.HOST.PID.THREAD.tmp``: two processes
    (or a save thread), on this node or another one sharing the file system, never share one,
    and :func:`writer_of` can tell whether its writer still lives."""
    return path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.{threading.get_ident() % 10**6}.tmp")


def writer_of(tmp: Path) -> tuple[str, int] | None:
    """(host, pid) of the writer of a :func:`private_name` temporary file; None for other names."""
    parts = tmp.name.split(".")
    if len(parts) >= 5 and parts[-3].isdigit():
        return parts[-4], int(parts[-3])
    return None


def atomic_write(path: Path, data: bytes | str, durable: bool = True,
                 fault: Callable[[IO[bytes], bytes], None] | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash at any moment leaves the old file or the new
    one, never a part: a temporary file, fsync, rename, fsync of the directory.

    ``durable=False`` skips both fsyncs, for files rewritten at every step whose loss on a
    power cut costs nothing (a process crash never loses them). ``fault`` is a test hook that
    may act on the half-written temporary file (see ``hpcorch.train.faults``).
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = private_name(path)
    try:
        with open(tmp, "wb") as f:
            if fault is not None:
                fault(f, raw)
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # A failed write (a full disk) must not leave its partial file to keep the disk full.
        with contextlib.suppress(OSError):
            tmp.unlink()
        if DiskFull.applies(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(path, exc, needed=len(raw)) from exc
        raise
    if durable:
        fsync_dir(path.parent)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} if it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def json_lines(path: Path, tail: int | None = None) -> Iterator[dict]:
    """The JSON objects of a ``.jsonl`` file (of its last ``tail`` bytes when given), skipping
    lines cut short by a crash (or by the tail's start); nothing if the file is missing."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the `with` below; only the open may fail)
    except OSError:
        return
    with f:
        if tail is not None:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail))
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def last_json_line(path: Path, max_bytes: int = 65536) -> dict:
    """The last JSON line of a file, reading only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            lines = f.read().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def number(value) -> float | None:
    """A finite number read from a JSON record, else None: a hand-edited or corrupt field
    (true, NaN, a string, a list) is skipped by its reader, not fatal to ``ls`` or a plot."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
