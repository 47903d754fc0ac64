"""Crash-safe checkpoints: one directory per step, a commit marker written last.

Each rank writes its files (temporary name, fsync, rename) and then a ``rank_NNNNN.done``
record listing their sizes and SHA-256 digests. Rank 0 waits for every rank's record and only
then writes ``COMMITTED`` (same protocol), so a checkpoint that lacks the marker, or whose
files do not match the digests in it, is never loaded. Older checkpoints are deleted only after
a newer one is committed. Rank 0's waiting uses the file system, not a collective, which lets
an asynchronous save finish in a background thread while training goes on.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

COMMIT = "COMMITTED"
_STEP_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, uncommitted, corrupted or incompatible."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"{_STEP_PREFIX}{step:09d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, crash_midway: bool = False) -> dict:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if crash_midway:  # fault injection: a real SIGKILL halfway through a real write
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _serialize(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _crash_requested(step: int) -> bool:
    """``HPCORCH_CRASH_IN_SAVE=STEP[:RANK]`` kills this process with SIGKILL mid-write (tests)."""
    spec = os.environ.get("HPCORCH_CRASH_IN_SAVE")
    if not spec:
        return False
    want_step, _, want_rank = spec.partition(":")
    rank = int(os.environ.get("RANK", "0"))
    return int(want_step) == step and (not want_rank or int(want_rank) == rank)


def to_cpu(obj: Any) -> Any:
    """A host-memory copy of a (nested) state, so that training may overwrite the original."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class Checkpointer:
    """Saves and finds checkpoints under ``root`` for one rank of a run."""

    def __init__(self, root: Path, rank: int, world_size: int, keep: int = 2,
                 async_save: bool = False, commit_timeout_s: float = 600.0):
        self.root, self.rank, self.world_size = Path(root), rank, world_size
        self.keep, self.async_save, self.commit_timeout_s = keep, async_save, commit_timeout_s
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    # ----- saving -------------------------------------------------------------------------
    def save(self, step: int, shared: dict | None, local: dict, meta: dict) -> float:
        """Save ``shared`` (written by rank 0 only: model, optimizer), ``local`` (this rank's own
        state: RNG) and ``meta`` (in the commit marker). Returns the seconds training was blocked.

        In async mode the call returns once the state is copied to host memory; at most one
        save is in flight (a new save first waits for the previous one).
        """
        start = time.perf_counter()
        self.wait()
        if self.async_save:
            shared, local = to_cpu(shared), to_cpu(local)
            self._thread = threading.Thread(target=self._write_guarded, args=(step, shared, local, meta),
                                            name=f"checkpoint-{step}", daemon=True)
            self._thread.start()
        else:
            self._write(step, shared, local, meta)
        return time.perf_counter() - start

    def wait(self) -> None:
        """Block until the save in flight (if any) is committed; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"asynchronous checkpoint save failed: {error}") from error

    def _write_guarded(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as exc:  # surfaced by the next wait()
            self._error = exc

    def _write(self, step: int, shared: dict | None, local: dict, meta: dict) -> None:
        d = step_dir(self.root, step)
        d.mkdir(parents=True, exist_ok=True)
        crash = _crash_requested(step)
        files = {}
        if self.rank == 0 and shared is not None:
            files["shared.pt"] = _write_atomic(d / "shared.pt", _serialize(shared), crash_midway=crash)
        name = f"rank_{self.rank:05d}.pt"
        files[name] = _write_atomic(d / name, _serialize(local), crash_midway=crash and self.rank != 0)
        _write_atomic(d / f"rank_{self.rank:05d}.done", json.dumps(files).encode())
        _fsync_dir(d)
        if self.rank == 0:
            manifest = self._gather_manifest(d)
            record = {"step": step, "world_size": self.world_size, "files": manifest, **meta}
            _write_atomic(d / COMMIT, json.dumps(record, indent=1).encode())
            _fsync_dir(d)
            self._prune()

    def _gather_manifest(self, d: Path) -> dict:
        deadline = time.monotonic() + self.commit_timeout_s
        manifest: dict = {}
        for r in range(self.world_size):
            done = d / f"rank_{r:05d}.done"
            while not done.exists():
                if time.monotonic() > deadline:
                    raise CheckpointError(f"rank {r} did not finish its part of {d} in "
                                          f"{self.commit_timeout_s:.0f} s; not committed")
                time.sleep(0.01)
            manifest.update(json.loads(done.read_text()))
        return manifest

    def _prune(self) -> None:
        """Keep the newest ``keep`` committed steps; drop uncommitted leftovers older than them."""
        committed = self.committed_steps()
        keep = set(committed[-self.keep:])
        newest = committed[-1] if committed else -1
        for d in self.root.glob(f"{_STEP_PREFIX}*"):
            step = _parse_step(d)
            if step is None or step in keep:
                continue
            if step in committed or step < newest:
                shutil.rmtree(d, ignore_errors=True)

    # ----- finding and loading --------------------------------------------------------------
    def committed_steps(self) -> list[int]:
        steps = (_parse_step(d) for d in self.root.glob(f"{_STEP_PREFIX}*") if (d / COMMIT).exists())
        return sorted(s for s in steps if s is not None)

    def load(self, step: int) -> tuple[dict, dict | None, dict]:
        """(shared state, this rank's local state or None, commit record) of ``step``.

        Every file is read once and checked against the size and SHA-256 in the commit record
        before anything is deserialized.
        """
        d = step_dir(self.root, step)
        try:
            record = json.loads((d / COMMIT).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{d}: not a committed checkpoint ({exc})") from None
        blobs = {}
        for name, info in record["files"].items():
            try:
                data = (d / name).read_bytes()
            except OSError:
                raise CheckpointError(f"{d / name}: missing") from None
            if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise CheckpointError(f"{d / name}: size or SHA-256 does not match the commit record")
            blobs[name] = data
        own = blobs.get(f"rank_{self.rank:05d}.pt")
        shared = torch.load(io.BytesIO(blobs["shared.pt"]), map_location="cpu", weights_only=False)
        local = torch.load(io.BytesIO(own), map_location="cpu", weights_only=False) if own else None
        return shared, local, record

    def load_latest(self, log=print) -> tuple[int, dict, dict | None, dict] | None:
        """The newest committed checkpoint that verifies, as (step, shared, local, record);
        corrupted ones are reported and skipped; None if there is none."""
        for step in reversed(self.committed_steps()):
            try:
                return (step, *self.load(step))
            except CheckpointError as exc:
                log(f"hpcorch: skipping corrupted checkpoint: {exc}")
        return None


def _parse_step(d: Path) -> int | None:
    try:
        return int(d.name[len(_STEP_PREFIX):])
    except ValueError:
        return None
