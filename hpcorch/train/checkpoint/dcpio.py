"""Sharded checkpoint files through ``torch.distributed.checkpoint`` (DCP), with the integrity
hooks hpcorch's commit protocol (:mod:`hpcorch.train.checkpoint.store`) needs.

Writing: every rank writes its own ``__<rank>_0.distcp`` file (rank 0 also ``.metadata``)
through :class:`DigestWriter`, a ``FileSystemWriter`` that writes each tensor's bytes as they
are in memory (:mod:`hpcorch.train.checkpoint.rawio`: no ``torch.save`` record, no buffer copy)
through a stream that computes size and digest while the bytes go out (no second pass over the
data), so the rank's ``.done`` record costs nothing extra to make; then fsyncs. The test fault
``HPCORCH_CRASH_IN_SAVE`` kills the process halfway through the rank's first data file
(:func:`hpcorch.train.faults.crash_in_save`).

Reading: :class:`VerifyingReader` reads each file it needs once, front to back, tensors straight
into their destinations (:func:`hpcorch.train.checkpoint.rawio.read_file`), and checks the whole
file against the commit record's size and digest before it commits anything. Files of the
earlier format (``torch.save`` records) are read whole, verified, then deserialized. So each
rank verifies exactly the files it reads (a resharded rank may read parts of several), and a
corrupted file fails DCP's collective read on every rank at once (DCP gathers the exception),
so the ranks fall back to an older checkpoint together.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, FileSystem, _item_size
from torch.distributed.checkpoint.planner import LoadItemType

from hpcorch.train.checkpoint import rawio
from hpcorch.train.checkpoint.rawio import DigestMismatch

__all__ = ["CheckpointException", "DigestMismatch", "Stager", "nbytes", "own_files", "read_full",
           "read_sharded", "read_verified", "write_sharded"]

METADATA = ".metadata"


class _DigestStream(io.RawIOBase):
    """A write stream that hashes what passes through it (the caller's buffers, as handed to the
    file: what is hashed is what was written); optionally dies midway (test fault)."""

    def __init__(self, raw, on_close: Callable[[int, str], None], kill_at: int | None,
                 on_error: Callable[[OSError], None]):
        self.raw, self.on_close, self.kill_at, self.on_error = raw, on_close, kill_at, on_error
        self.hasher, self.size = rawio.new_hasher(), 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def fileno(self) -> int:
        return self.raw.fileno()

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        if self.kill_at is not None and self.size + len(view) >= self.kill_at:
            self.raw.write(view[: self.kill_at - self.size])  # half the file, durably, then die
            self.raw.flush()
            os.fsync(self.raw.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            self.raw.write(view)
        except OSError as exc:  # torch's zip writer turns it into an opaque RuntimeError
            self.on_error(exc)
            raise
        self.hasher.update(view)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        if not self.raw.closed:
            self.raw.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.raw.close()
            self.on_close(self.size, self.hasher.hexdigest())


class _DigestFileSystem(FileSystem):
    """DCP's local file system, recording {file name: {size, digest}} of every file written."""

    def __init__(self, fault: Callable | None):
        super().__init__()
        self.files: dict[str, dict] = {}
        self.fault, self.expected = fault, 0
        self.error: OSError | None = None  # the first write error (a full disk), said as such

    @contextlib.contextmanager
    def create_stream(self, path, mode: str):
        if "w" not in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        name = Path(path).name
        kill_at = None
        if self.fault is not None and name.endswith(".distcp"):
            kill_at, self.fault = max(1, self.expected // 2), None  # the first data file only

        def record(size: int, digest: str) -> None:
            self.files[name] = {"size": size, rawio.DIGEST: digest}

        def failed(exc: OSError) -> None:
            self.error = self.error or exc

        try:
            with open(path, mode) as raw, _DigestStream(raw, record, kill_at, failed) as stream:
                yield stream
        except OSError as exc:  # also the buffered tail failing at close
            failed(exc)
            raise

    def rename(self, path, new_path) -> None:
        super().rename(path, new_path)
        info = self.files.pop(Path(path).name, None)
        if info is not None:  # .metadata.tmp -> .metadata
            self.files[Path(new_path).name] = info


class DigestWriter(dcp.FileSystemWriter):
    """A ``FileSystemWriter`` (fsync per file) whose :attr:`files` lists what this rank wrote."""

    def __init__(self, path: Path, fault: Callable | None = None):
        super().__init__(path, sync_files=True, thread_count=1, overwrite=True)
        self.fs = _DigestFileSystem(fault)

    @property
    def files(self) -> dict[str, dict]:
        return self.fs.files

    def write_data(self, plan, planner):
        """This rank's items into one file, raw (:func:`hpcorch.train.checkpoint.rawio.write_items`), fsynced."""
        from torch.futures import Future

        self.fs.expected = sum(_item_size(item) for item in plan.items if item.tensor_data is not None)
        name = f"{plan.storage_data.prefix}0{DEFAULT_SUFFIX}"
        with self.fs.create_stream(Path(self.path) / name, "wb") as stream:
            results = rawio.write_items(stream, name, plan.items, planner)
            stream.flush()
            os.fsync(stream.fileno())
        done: Future = Future()
        done.set_result(results)
        return done


def write_sharded(folder: Path, state: dict, group, fault: Callable | None = None) -> dict[str, dict]:
    """Write this rank's shards of ``state`` into ``folder`` (a collective over ``group``, or
    one process when None); returns {file name: {size, digest}} of the files this rank wrote."""
    if group is None and not state:
        return {}  # one process with nothing to write (a store test's stand-in rank)
    writer = DigestWriter(folder, fault)
    try:
        with _quiet_overwrite():
            dcp.save(state, storage_writer=writer, process_group=group, no_dist=group is None and _no_dist())
    except CheckpointException:
        if writer.fs.error is not None:  # this rank's own write failed: say why (peers see ours)
            raise writer.fs.error from None
        raise
    return dict(writer.files)


def own_files(folder: Path, rank: int) -> list[Path]:
    """The DCP files ``rank`` writes into ``folder`` (for removing a failed save's leftovers)."""
    found = list(folder.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        found += list(folder.glob(f"{METADATA}*"))
    return found


def read_verified(path: Path, digests: dict[str, dict] | None) -> bytes:
    """``path``'s bytes, read once, whole, and checked against ``digests[path.name]`` (the
    commit record's size and digest; None: unchecked). Raises :class:`DigestMismatch`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DigestMismatch(f"{path}: missing ({exc.strerror})") from None
    if digests is not None:
        want = digests.get(path.name)
        hasher = rawio.new_hasher(want)
        hasher.update(data)
        rawio.check(str(path), want, len(data), hasher)
    return data


class VerifyingReader(dcp.FileSystemReader):
    """Reads each needed file once, checks it against ``digests`` and serves DCP's requests
    from memory. ``error``, if set, is raised inside the collective read (a failure found
    before the read, e.g. this rank's own RNG file, reaches every rank the same way)."""

    def __init__(self, path: Path, digests: dict[str, dict] | None, error: str | None = None):
        super().__init__(path)
        self.digests, self.error = digests, error

    def _verified(self, name: str) -> bytes:
        return read_verified(Path(self.path) / name, self.digests)

    def read_metadata(self, *args: Any, **kwargs: Any):
        import pickle

        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = pickle.loads(self._verified(METADATA))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan, planner):
        from torch.distributed._shard._utils import narrow_tensor_by_index
        from torch.distributed.checkpoint.utils import _create_file_view as view_of
        from torch.futures import Future

        if self.error:
            raise DigestMismatch(self.error)
        per_file: dict[str, list] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        for name, items in per_file.items():
            if self._streamable(items):
                self._read_raw(name, items, planner)
                continue
            data = self._verified(name)
            stream = io.BytesIO(data)  # shares the bytes: no copy
            for req in sorted(items, key=lambda r: self.storage_data[r.storage_index].offset):
                info = self.storage_data[req.storage_index]
                raw = rawio.parse(info.transform_descriptors)
                if info.transform_descriptors and raw is None:
                    raise DigestMismatch(f"{name}: written with stream transforms hpcorch does not use")
                part = view_of(stream, info.offset, info.length)
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(part.read(-1)))
                    continue
                if raw is not None:  # raw entries that overlap: served from the verified bytes
                    tensor = torch.frombuffer(bytearray(part.read(-1)), dtype=raw[0]).reshape(raw[1])
                else:
                    tensor = torch.load(part, map_location="cpu", weights_only=True)
                tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
                target = planner.resolve_tensor(req).detach()
                if target.size() != tensor.size():
                    raise DigestMismatch(f"{name}: {req.storage_index.fqn} has size {tuple(tensor.size())}, "
                                         f"expected {tuple(target.size())}")
                target.copy_(tensor)
                planner.commit_tensor(req, target)
        done: Future = Future()
        done.set_result(None)
        return done

    def _streamable(self, items: list) -> bool:
        """Whether one front-to-back pass serves ``items``: every entry raw, none overlapping."""
        end = 0
        for req in sorted(items, key=lambda r: self.storage_data[r.storage_index].offset):
            info = self.storage_data[req.storage_index]
            if (req.type != LoadItemType.BYTE_IO and rawio.parse(info.transform_descriptors) is None) \
                    or info.offset < end:
                return False
            end = info.offset + info.length
        return True

    def _read_raw(self, name: str, items: list, planner) -> None:
        path = Path(self.path) / name
        want = self.digests.get(name) if self.digests is not None else None
        if self.digests is not None and want is None:
            raise DigestMismatch(f"{path}: not in the commit record")
        try:
            rawio.read_file(path, items, lambda r: self.storage_data[r.storage_index], planner, want,
                            verify=self.digests is not None)
        except OSError as exc:
            raise DigestMismatch(f"{path}: unreadable ({exc.strerror})") from None


def read_sharded(folder: Path, target: dict, group, digests: dict[str, dict] | None,
                 error: str | None = None) -> None:
    """Load ``target`` (tensors filled in place, other values replaced) from ``folder``,
    resharding by name; a collective over ``group``. Raises :class:`CheckpointException`
    on every rank if any rank's files fail verification."""
    with _quiet_overwrite():
        dcp.load(target, storage_reader=VerifyingReader(folder, digests, error), process_group=group,
                 no_dist=group is None and _no_dist())


def read_full(folder: Path, digests: dict[str, dict] | None) -> dict:
    """The whole state of a DCP checkpoint in this one process (no process group): every
    tensor full and unsharded, nested as saved. For export and inspection."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=VerifyingReader(folder, digests),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return state


def _no_dist() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _quiet_overwrite():
    """DCP warns when a folder already holds ``.metadata``: a retried step's leftover, which
    hpcorch's protocol expects (it is not committed); not worth a warning per save."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.checkpoint")
        yield


class Stager:
    """Copies a state (tensors or DTensors) into host buffers kept from one save to the next
    (pinned on CUDA): the only part of an asynchronous save that blocks training. The buffers
    are reused only after the previous save is done (one save in flight)."""

    def __init__(self):
        self._buffers: dict | None = None
        self._shape: Any = None

    def stage(self, state: dict) -> dict:
        from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict

        shape = _shape_of(state)
        if self._buffers is None or shape != self._shape:
            pin = torch.cuda.is_available() and any(_on_cuda(v) for v in _leaves(state))
            self._buffers, self._shape = _create_cpu_state_dict(state, pin_memory=pin), shape
        _copy_state_dict(state, self._buffers, non_blocking=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the copy is done before training touches the tensors again
        return self._buffers


def _leaves(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


def _on_cuda(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cuda"


def _shape_of(obj: Any) -> Any:
    """What must match for staging buffers to be reused: keys, tensor shapes and dtypes."""
    if isinstance(obj, dict):
        return tuple((k, _shape_of(v)) for k, v in obj.items())
    if isinstance(obj, torch.Tensor):
        return (tuple(obj.shape), obj.dtype)
    return type(obj)


def nbytes(obj: Any) -> int:
    """Bytes of this rank's tensors in a state (its own shards of DTensors)."""
    total = 0
    for v in _leaves(obj):
        if isinstance(v, torch.Tensor):
            local = v.to_local() if hasattr(v, "to_local") else v
            total += local.numel() * local.element_size()
    return total
