"""Token shards on disk in Megatron-LM's indexed-dataset layout: ``PREFIX.bin`` holds the tokens
of every document back to back, ``PREFIX.idx`` their lengths and byte offsets.

Why this layout and not llm.c's 256-int32 header: Megatron-LM, NeMo, datatrove's Megatron
writer and torchtitan-adjacent tools read ``.bin/.idx`` pairs as they are, so a corpus prepared by
hpcorch trains elsewhere and the reverse; and the index gives document boundaries, which llm.c's
header does not. The reader memory-maps both files, so no process ever reads a shard whole.

``.idx``: ``b"MMIDIDX\\x00\\x00"``, ``<Q`` version 1, ``<B`` dtype code, ``<Q`` sequence count,
``<Q`` document-index count, then int32 sequence lengths, int64 byte pointers into ``.bin`` and
int64 document indices (one sequence per document here, so ``0, 1, ..., n``).

Token width follows the vocabulary: uint16 when every id fits (< 65,536), else int32, which
holds Llama-3's 128k vocabulary and is what Megatron writes above uint16 (its format has no
uint32 code).

A writer produces ``PREFIX.bin`` then ``PREFIX.idx``, each through a private temporary name,
fsync and rename, so a crash leaves either no ``.idx`` (the shard does not exist) or a whole pair.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcorch.util.fileio import fsync_dir, private_name

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# Megatron-LM's DType codes (megatron/core/datasets/indexed_dataset.py).
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
TOKEN_DTYPES = {"uint16": np.uint16, "int32": np.int32}
_HEADER = struct.Struct("<9sQBQQ")


class FormatError(ValueError):
    """A shard that is not a whole ``.bin/.idx`` pair of this layout; the message names the file."""


def token_dtype(vocab_size: int) -> str:
    """The narrowest token type for ids ``0 .. vocab_size - 1``."""
    if vocab_size < 1:
        raise ValueError(f"expected a vocabulary size >= 1, got {vocab_size}")
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def _code_of(dtype: np.dtype) -> int:
    return next(code for code, t in DTYPE_CODES.items() if np.dtype(t) == np.dtype(dtype))


@dataclass(frozen=True)
class ShardInfo:
    """What a finished shard holds; ``sha256`` is of the ``.bin`` bytes."""

    name: str
    tokens: int
    documents: int
    sha256: str


class ShardWriter:
    """Appends documents (token arrays, end-of-text included by the caller) to one shard.

    Use as a context manager: leaving it normally publishes the pair; leaving by an exception
    removes the temporary files and publishes nothing."""

    def __init__(self, prefix: Path, dtype: str):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(TOKEN_DTYPES[dtype])
        self._lengths: list[int] = []
        self._hash = hashlib.sha256()
        self._bin_tmp = private_name(self.prefix.with_suffix(".bin"))
        self._file = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self.info: ShardInfo | None = None

    def add(self, tokens) -> None:
        """Append one document's tokens."""
        arr = np.asarray(tokens)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token id out of range for {self.dtype.name}: {int(arr.min())}..{int(arr.max())}")
        raw = arr.astype(self.dtype, copy=False).tobytes()
        self._file.write(raw)
        self._hash.update(raw)
        self._lengths.append(int(arr.size))

    def close(self) -> ShardInfo:
        """Make the shard durable and visible: ``.bin`` first, ``.idx`` last. A failure on the way
        (a full disk) removes what it wrote, so no part of the pair stays to fill the disk."""
        idx = self.prefix.with_suffix(".idx")
        idx_tmp = private_name(idx)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            # A stale .idx of an earlier attempt must not pair with the new .bin meanwhile.
            with contextlib.suppress(FileNotFoundError):
                idx.unlink()
            os.replace(self._bin_tmp, self.prefix.with_suffix(".bin"))
            with open(idx_tmp, "wb") as f:
                f.write(index_bytes(np.asarray(self._lengths, dtype=np.int32), self.dtype))
                f.flush()
                os.fsync(f.fileno())
            os.replace(idx_tmp, idx)
            fsync_dir(idx.parent)
        except BaseException:
            self._file.close()
            for path in (self._bin_tmp, idx_tmp, self.prefix.with_suffix(".bin")):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        self.info = ShardInfo(self.prefix.name, int(sum(self._lengths)), len(self._lengths), self._hash.hexdigest())
        return self.info

    def abort(self) -> None:
        """Drop what was written; nothing is published."""
        self._file.close()
        with contextlib.suppress(OSError):
            self._bin_tmp.unlink()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def index_bytes(lengths: np.ndarray, dtype: np.dtype) -> bytes:
    """The ``.idx`` file for documents of ``lengths`` tokens of ``dtype``."""
    lengths = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    documents = np.arange(len(lengths) + 1, dtype=np.int64)
    header = _HEADER.pack(MAGIC, VERSION, _code_of(dtype), len(lengths), len(documents))
    return header + lengths.tobytes() + pointers.tobytes() + documents.tobytes()


class Shard:
    """One ``.bin/.idx`` pair, memory-mapped: ``tokens`` is the flat token stream and
    ``lengths``/``offsets`` give each document's length and first token."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        idx_path, bin_path = self.prefix.with_suffix(".idx"), self.prefix.with_suffix(".bin")
        try:
            idx = np.memmap(idx_path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise FormatError(f"{idx_path}: cannot read the shard index ({exc})") from None
        if len(idx) < _HEADER.size:
            raise FormatError(f"{idx_path}: {len(idx)} bytes is shorter than the index header")
        magic, version, code, count, doc_count = _HEADER.unpack(bytes(idx[:_HEADER.size]))
        if magic != MAGIC or version != VERSION or code not in DTYPE_CODES:
            raise FormatError(f"{idx_path}: not a Megatron indexed-dataset index (version 1)")
        expected = _HEADER.size + count * (4 + 8) + doc_count * 8
        if len(idx) != expected:
            raise FormatError(f"{idx_path}: {len(idx)} bytes, expected {expected} for {count} documents")
        self.dtype = np.dtype(DTYPE_CODES[code])
        start = _HEADER.size
        self.lengths = np.frombuffer(idx, dtype=np.int32, count=count, offset=start)
        self.pointers = np.frombuffer(idx, dtype=np.int64, count=count, offset=start + 4 * count)
        total = int(self.lengths.sum(dtype=np.int64))
        size = bin_path.stat().st_size if bin_path.exists() else -1
        if size != total * self.dtype.itemsize:
            raise FormatError(f"{bin_path}: {size} bytes, expected {total * self.dtype.itemsize} "
                              f"({total} tokens of {self.dtype.name}) as its index says")
        self.tokens = (np.memmap(bin_path, dtype=self.dtype, mode="r") if total
                       else np.zeros(0, dtype=self.dtype))

    @property
    def offsets(self) -> np.ndarray:
        """Each document's first token (computed when asked: kept, it would be 8 bytes of a
        rank's private memory per document)."""
        return self.pointers // self.dtype.itemsize

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return len(self.lengths)

    def document(self, i: int) -> np.ndarray:
        """The tokens of document ``i`` (a view into the memory map)."""
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start:start + int(self.lengths[i])]
