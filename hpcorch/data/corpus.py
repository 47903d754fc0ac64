"""A corpus on disk as documents: which files (inputs expanded in a fixed order), and the
documents each holds.

- A text file is one document (the whole file).
- A ``.jsonl``/``.ndjson`` file is one document per line: the string under a named field.
- ``.gz`` and ``.zst`` files are read through their decompressor (the rule above applies to the
  name without that suffix).

Bad input (an unreadable file, invalid UTF-8, a JSONL line that is not JSON or lacks the field)
is one line naming the file and line. ``on_error="stop"`` raises it (:class:`CorpusError`, exit 2);
``"skip"`` logs it, skips that document (a whole file for a text file) and counts it in the file's
:class:`~hpcorch.data.index.SourceFile`. While reading, each file's size and SHA-256 (of its bytes
on disk) are taken, so a training job can tell later whether the corpus changed.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hpcorch.data.index import SourceFile
from hpcorch.errors import HpcorchError

log = logging.getLogger(__name__)

POLICIES = ("skip", "stop")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_CHUNK = 1 << 20


class CorpusError(HpcorchError):
    """Bad input: one line naming the file (and line) and what was expected."""


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named by ``inputs`` in order: a file as is, a folder's files recursively (sorted by
    relative path; hidden entries skipped), a glob's matches sorted. Each file once (its first
    place). Nothing found for an input is an error naming it."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted((p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                           key=lambda p: p.relative_to(path).as_posix())
        elif path.is_file():
            files = [path]
        elif glob.has_magic(item):
            files = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            files = []
        if not files:
            raise CorpusError(f"{item}: no such file, folder or matching glob")
        found += (f.resolve() for f in files)
    seen: set[Path] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def is_jsonl(path: Path) -> bool:
    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    return name.endswith(JSONL_SUFFIXES)


class _Hashing(io.RawIOBase):
    """A raw file that hashes and counts every byte read through it."""

    def __init__(self, raw):
        self.raw, self.hash, self.size = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.hash.update(memoryview(buffer)[:n])
            self.size += n
        return n

    def finish(self) -> None:
        """Read what the decompressor left unread, so the hash covers the whole file."""
        buf = bytearray(_CHUNK)
        while n := self.raw.readinto(buf):
            self.hash.update(memoryview(buf)[:n])
            self.size += n


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a file or its decompression may raise (zlib and zstandard raise their own)."""
    import zlib

    errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _open(raw: _Hashing, path: Path):
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=io.BufferedReader(raw, _CHUNK), mode="rb")
    if path.name.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK), _CHUNK)
    return io.BufferedReader(raw, _CHUNK)


@dataclass
class Source:
    """Reads one file's documents; after iterating, :meth:`record` is its fingerprint and counts."""

    path: Path
    jsonl_field: str = "text"
    on_error: str = "stop"
    documents: int = 0
    skipped: int = 0
    _hash: str = ""
    _size: int = 0
    errors: list[str] = field(default_factory=list)

    def _bad(self, message: str) -> None:
        if self.on_error == "stop":
            raise CorpusError(message)
        self.skipped += 1
        self.errors.append(message)
        log.warning("skipped: %s", message)

    def __iter__(self) -> Iterator[str]:
        try:
            with open(self.path, "rb", buffering=0) as f:
                raw = _Hashing(f)
                try:
                    with _open(raw, self.path) as stream:
                        yield from (self._jsonl(stream) if is_jsonl(self.path) else self._text(stream))
                except _read_errors() as exc:
                    # A broken .gz/.zst, or a read error: the rest of the file is lost.
                    self._bad(f"{self.path}: unreadable after {self.documents} documents "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
                raw.finish()
                self._hash, self._size = raw.hash.hexdigest(), raw.size
        except OSError as exc:
            self._bad(f"{self.path}: cannot read ({exc.strerror or exc})")
            self._hash, self._size = "", 0

    def _text(self, stream) -> Iterator[str]:
        data = stream.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            self._bad(f"{self.path}:{line}: invalid UTF-8 (byte {exc.start}); expected UTF-8 text")
            return
        self.documents += 1
        yield text

    def _jsonl(self, stream) -> Iterator[str]:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self._bad(f"{where}: invalid UTF-8 (byte {exc.start} of the line); expected UTF-8 JSON")
                continue
            except ValueError as exc:
                self._bad(f"{where}: not JSON ({str(exc).splitlines()[0]})")
                continue
            text = record.get(self.jsonl_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                self._bad(f"{where}: expected an object with a string field {self.jsonl_field!r}")
                continue
            self.documents += 1
            yield text

    def record(self) -> SourceFile:
        """The file's fingerprint and counts (after the documents were read)."""
        return SourceFile(str(self.path), self._size, self._hash, self.documents, self.skipped)


def file_sizes(paths: list[Path]) -> list[int]:
    """Each file's size on disk (0 when it cannot be stat'ed: reading it reports why)."""
    sizes = []
    for p in paths:
        try:
            sizes.append(os.stat(p).st_size)
        except OSError:
            sizes.append(0)
    return sizes
