"""Checkpoint file contents at the disk's speed: file digests, and tensors written and read as
their raw bytes (:mod:`hpcorch.train.checkpoint.dcpio` plugs this into DCP).

**Digests.** Every file's commit record entry is its size and XXH3-128 digest
(``{"size": N, "xxh3_128": HEX}``), computed from the very buffers handed to ``write()`` and, on
load, from the bytes as read back. XXH3 runs at several GiB/s on one core, well above the disk
(SHA-256 ran at about half the disk's write speed and five times below a cached read, so it
was most of a save and of a load), so it is computed inline: no thread, nothing to overlap.
It is as safe against torn writes and bit rot as SHA-256 was: what a digest must catch here is
a file that is not byte for byte what was written (a write cut short, a zeroed or stale block,
a flipped bit), and a 128-bit hash with full avalanche misses such a change with probability
2^-128; the size is checked as well. It is not a defence against someone forging files on
purpose, and SHA-256 never was one here: whoever can write the files can write the commit
record that holds their digests. Records written before (``"sha256"``) still verify.

**Raw tensors.** A tensor is stored as its contiguous bytes in native byte order (no
``torch.save`` zip record per tensor), tagged in DCP's metadata with :data:`RAW` and its dtype
and shape, so loading can read the bytes straight into the destination tensor: one pass from
the file system into the model, plus the digest. DCP's stock reader refuses such an entry
(unknown transform) rather than misreading it; hpcorch's reader also still reads the earlier
``torch.save`` entries.

A load that reads into the destination verifies a file only once it has been read, so a
corrupted file leaves a partly overwritten destination behind: the store raises, and the
caller loads an older checkpoint over it or refuses to train (see
``Checkpointer._find``). Non-tensor values (pickled bytes) are only unpickled after their file
verified.
"""
from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import xxhash

DIGEST = "xxh3_128"
RAW = "hpcorch.raw/1"  # the first transform descriptor of a raw tensor entry
_SCRATCH = 8 << 20  # bytes read at a time from parts of a file this rank does not load


class DigestMismatch(RuntimeError):
    """A checkpoint file does not match the size or digest its commit record gives."""


def new_hasher(want: dict | None = None):
    """A streaming hasher for a record entry ``want`` (its algorithm: ``xxh3_128`` or the older
    ``sha256``), or for a new entry (None)."""
    if want is not None and DIGEST not in want and "sha256" in want:
        import hashlib

        return hashlib.sha256()
    return xxhash.xxh3_128()


def digest(data: bytes | memoryview) -> dict:
    """The record entry of a whole file's bytes."""
    hasher = new_hasher()
    hasher.update(data)
    return {"size": memoryview(data).nbytes, DIGEST: hasher.hexdigest()}


def check(name: str, want: dict | None, size: int, hasher) -> None:
    """Raise :class:`DigestMismatch` unless ``size`` and ``hasher`` match ``want``."""
    if want is None:
        raise DigestMismatch(f"{name}: not in the commit record")
    key = DIGEST if DIGEST in want else "sha256"
    if size != want.get("size") or hasher.hexdigest() != want.get(key):
        raise DigestMismatch(f"{name}: size or digest does not match the commit record")


# ----- writing --------------------------------------------------------------------------------
def byte_view(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def descriptors(tensor: torch.Tensor) -> list[str]:
    """What a reader needs to rebuild the tensor from its bytes (kept in DCP's metadata)."""
    return [RAW, str(tensor.dtype).removeprefix("torch."), ",".join(map(str, tensor.shape)), sys.byteorder]


def write_items(stream, name: str, items: list, planner) -> list:
    """Write DCP's ``items`` (tensors as raw bytes, others as DCP's pickled bytes) to ``stream``
    (a file of this rank named ``name``) and return DCP's ``WriteResult`` for each."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.planner import WriteItemType
    from torch.distributed.checkpoint.storage import WriteResult

    results = []
    for item in sorted(items, key=lambda i: i.type != WriteItemType.BYTE_IO):  # small ones first
        data = planner.resolve_data(item)
        tags = None
        if item.type == WriteItemType.BYTE_IO:
            view = data.getbuffer()
        else:
            tensor = data.detach().cpu().contiguous()  # a no-op for a contiguous host tensor
            view, tags = byte_view(tensor), descriptors(tensor)
        offset = stream.tell()
        stream.write(view)
        results.append(WriteResult(index=item.index, size_in_bytes=view.nbytes,
                                   storage_data=_StorageInfo(name, offset, view.nbytes, transform_descriptors=tags)))
    return results


# ----- reading --------------------------------------------------------------------------------
def parse(tags) -> tuple[torch.dtype, tuple[int, ...]] | None:
    """(dtype, shape) of a raw entry; None for an entry DCP wrote with ``torch.save``."""
    if not tags or tags[0] != RAW:
        return None
    if len(tags) != 4 or tags[3] != sys.byteorder:
        raise DigestMismatch(f"raw tensor entry {list(tags)} is not readable on this machine")
    dtype = getattr(torch, tags[1], None)
    if not isinstance(dtype, torch.dtype):
        raise DigestMismatch(f"raw tensor entry of unknown dtype {tags[1]!r}")
    return dtype, tuple(int(s) for s in tags[2].split(",") if s)


def _readinto(f, view: memoryview, hasher) -> None:
    """Fill ``view`` from ``f`` exactly, hashing it; a short file is a mismatch."""
    done = 0
    while done < view.nbytes:
        got = f.readinto(view[done:])
        if not got:
            raise DigestMismatch(f"{f.name}: shorter than its checkpoint metadata says")
        done += got
    if hasher is not None:
        hasher.update(view)


def _skip(f, length: int | None, hasher, scratch: memoryview) -> int:
    """Read and hash ``length`` bytes (None: to the end of the file); the bytes read."""
    total = 0
    while length is None or total < length:
        want = scratch.nbytes if length is None else min(scratch.nbytes, length - total)
        got = f.readinto(scratch[:want])
        if not got:
            if length is None:
                break
            raise DigestMismatch(f"{f.name}: shorter than its checkpoint metadata says")
        if hasher is not None:
            hasher.update(scratch[:got])
        total += got
    return total


def read_file(path: Path, reqs: list, storage: Callable[[Any], Any], planner, want: dict | None,
              verify: bool) -> None:
    """Serve DCP's read requests ``reqs`` of one file whose entries are all raw (see
    :func:`parse`), reading the file once front to back: each tensor's bytes straight into its
    destination when the request takes the whole stored tensor into a contiguous host tensor
    (the usual resume), else through a buffer of the stored tensor. Bytes no request needs are
    read too, so that the digest covers the whole file; it is checked (``verify``) before any
    request is committed or any pickled value unpickled. ``storage(req)``: the entry's
    ``_StorageInfo``."""
    from torch.distributed._shard._utils import narrow_tensor_by_index
    from torch.distributed.checkpoint.planner import LoadItemType

    hasher = new_hasher(want) if verify else None
    scratch = memoryview(bytearray(_SCRATCH))
    after: list[Callable[[], None]] = []
    with open(path, "rb", buffering=0) as f:
        pos = 0
        for req in sorted(reqs, key=lambda r: storage(r).offset):
            info = storage(req)
            pos += _skip(f, info.offset - pos, hasher, scratch)
            if req.type == LoadItemType.BYTE_IO:
                buf = bytearray(info.length)
                _readinto(f, memoryview(buf), hasher)
                after.append(lambda req=req, buf=buf: planner.load_bytes(req, io.BytesIO(buf)))
            else:
                dtype, shape = parse(info.transform_descriptors)
                target = planner.resolve_tensor(req).detach()
                whole = all(o == 0 for o in req.storage_offsets) and tuple(req.lengths) == shape
                direct = (whole and target.device.type == "cpu" and target.dtype == dtype
                          and target.is_contiguous() and tuple(target.shape) == shape)
                stored = target if direct else torch.empty(shape, dtype=dtype)
                if stored.numel() * stored.element_size() != info.length:
                    raise DigestMismatch(f"{path}: {req.storage_index.fqn} has {info.length} bytes, "
                                         f"expected {shape} of {dtype}")
                _readinto(f, byte_view(stored), hasher)
                if not direct:
                    part = narrow_tensor_by_index(stored, req.storage_offsets, req.lengths)
                    if target.size() != part.size():
                        raise DigestMismatch(f"{path}: {req.storage_index.fqn} has size {tuple(part.size())}, "
                                             f"expected {tuple(target.size())}")
                    target.copy_(part)
                after.append(lambda req=req, target=target: planner.commit_tensor(req, target))
            pos += info.length
        pos += _skip(f, None, hasher, scratch)
    if verify:
        check(str(path), want, pos, hasher)
    for step in after:
        step()
