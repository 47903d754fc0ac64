"""Crash-safe checkpoint storage: one directory per step, a commit marker written last.

Every rank writes its shards of the model and optimizer state through
``torch.distributed.checkpoint`` (:mod:`hpcorch.train.checkpoint.dcpio`: ``__<rank>_<n>.distcp``, rank 0
also ``.metadata``, fsynced), its own ``rank_NNNNN.pt`` (its RNG, through
:func:`hpcorch.util.fileio.atomic_write`), and then a ``rank_NNNNN.done`` record listing the sizes and
digests of ITS OWN files (computed while writing; see :mod:`hpcorch.train.checkpoint.rawio`). Rank 0
waits for every rank's record and only then writes the commit marker (same protocol), so a
checkpoint that lacks the marker, or whose files do not match the digests in it, is never
loaded. Older checkpoints are deleted only after a newer one is committed. Rank 0's waiting
uses the file system, not a collective, which lets an asynchronous save finish in a
background thread while training goes on.

A save that fails on this rank (a full disk: any ``OSError``) removes what this rank wrote of
the uncommitted step and raises :class:`SaveFailed`, one line naming the file system and the
space needed versus free. In a synchronous save the ranks then agree (``agree``, a collective)
twice: after writing their parts and after the commit, so that every rank stops at the same
point; the others raise :class:`PeerSaveFailed` (the failing rank says why) instead of dying
later in a collective with a misleading error. The previous committed checkpoint is untouched.

DCP's collectives run on ``group``, a gloo process group of their own created once by every
rank, so that an asynchronous save's thread never shares a group with training's collectives.
Checkpoints of the format before DCP (one ``shared.pt`` with the full state) still load.

Folder names, the marker and "which steps are committed" come from
:class:`hpcorch.state.rundir.CheckpointLayout`, so ``hpcorch status`` and the trainer agree.
This module stores opaque states; :mod:`hpcorch.train.checkpoint.checkpointer` decides what is in them.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from hpcorch.state.rundir import COMMIT_MARKER, CheckpointLayout
from hpcorch.train.checkpoint import dcpio, rawio
from hpcorch.train.faults import crash_in_commit, crash_in_prune, crash_in_save
from hpcorch.util.diskspace import describe_write_failure
from hpcorch.util.fileio import atomic_write, fsync_dir, writer_of
from hpcorch.util.poll import PollTimeout, poll_until

SHARED_FILE = "shared.pt"  # the format before DCP: rank 0's full model and optimizer state

_logger = logging.getLogger("hpcorch.train")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: missing, uncommitted, corrupted or incompatible."""


class SaveFailed(CheckpointError):
    """This rank could not write its part of a checkpoint (a full disk, an I/O error)."""


class PeerSaveFailed(CheckpointError):
    """Another rank could not write its part of a checkpoint: this one stops too, quietly."""

    def __init__(self, step: int):
        super().__init__(f"another rank could not write its part of step {step}'s checkpoint "
                         f"(its error line says why); not committed")


def rank_file(rank: int) -> str:
    """The file of ``rank``'s own state (its RNG)."""
    return f"rank_{rank:05d}.pt"


def done_file(rank: int) -> str:
    """``rank``'s record of the files it wrote, with their sizes and digests."""
    return f"rank_{rank:05d}.done"


def to_cpu(obj: Any) -> Any:
    """A host-memory copy of a (nested) state, so that training may overwrite the original."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _serialize(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _deserialize(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class CheckpointStore:
    """Saves and finds checkpoints under ``root`` for one rank of a run."""

    def __init__(self, root: Path, rank: int, world_size: int, keep: int = 2,
                 async_save: bool = False, commit_timeout_s: float = 600.0,
                 fence: Callable[[], None] = lambda: None, agree: Callable[..., int | None] | None = None,
                 group: Any = None):
        self.layout = CheckpointLayout(root)
        self.fence = fence  # raises if this process may no longer commit (the run dir's lease moved on)
        # Every rank's word on a synchronous save, ``agree(ok, own=True)``: None if all say ok,
        # else the lowest rank that failed on its own (see train.distributed.first_to_fail); a
        # collective, so never called from the async thread; None: no agreement (one process).
        self.agree = agree
        self.root, self.rank, self.world_size = self.layout.root, rank, world_size
        self.keep, self.async_save, self.commit_timeout_s = keep, async_save, commit_timeout_s
        self.group = group  # DCP's own gloo group (None: one process)
        self._stager = dcpio.Stager()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pruner: threading.Thread | None = None  # deleting pruned checkpoints' files
        self.root.mkdir(parents=True, exist_ok=True)

    # ----- saving -------------------------------------------------------------------------
    def save(self, step: int, state: dict | None, local: dict, meta: dict) -> float:
        """Save ``state`` (model and optimizer: every rank writes its shards of it, through DCP),
        ``local`` (this rank's own state: RNG) and ``meta`` (in the commit marker). Returns the
        seconds training was blocked.

        In async mode the call returns once the state is copied to host memory; at most one
        save is in flight (a new save first waits for the previous one).
        """
        start = time.perf_counter()
        self.wait()
        if self.async_save:
            state, local = self._stager.stage(state or {}), to_cpu(local)
            self._thread = threading.Thread(target=self._write_guarded, args=(step, state, local, meta),
                                            name=f"checkpoint-{step}", daemon=True)
            self._thread.start()
        else:
            self._write(step, state, local, meta)
        return time.perf_counter() - start

    def wait(self) -> None:
        """Block until the save in flight (if any) is committed and pruned; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._join_pruner()
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, CheckpointError):  # already one clear line
                raise error
            raise CheckpointError(f"asynchronous checkpoint save failed: {error}") from error

    def _write_guarded(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as exc:  # surfaced by the next wait()
            self._error = exc

    def _write(self, step: int, state: dict | None, local: dict, meta: dict) -> None:
        d = self.layout.step_dir(step)
        state, blob = state or {}, _serialize(local)
        needed = dcpio.nbytes(state) + len(blob)
        with self._stage(step, d, needed, peer_failure_discards=True):
            self._write_parts(step, d, state, blob)
        # A peer failing here may be rank 0 fenced out by a newer attempt that writes this very
        # folder: then our files are not ours to remove (an uncommitted leftover is harmless).
        with self._stage(step, d, needed, peer_failure_discards=False):
            if self.rank == 0:
                record = {"step": step, "world_size": self.world_size, "files": self._gather_manifest(d), **meta}
                self.fence()
                remove_dead_temporaries(d)  # every rank's part is written: what is left is a dead writer's
                atomic_write(d / COMMIT_MARKER, json.dumps(record, indent=1), fault=crash_in_commit(step))
        if self.rank == 0:
            self._prune()

    def _write_parts(self, step: int, d: Path, state: dict, blob: bytes) -> None:
        """This rank's shards (DCP, a collective on ``group``) and RNG file, then its record of
        them (the ``.done`` file rank 0 waits for)."""
        d.mkdir(parents=True, exist_ok=True)
        # A retried step's record from a crashed attempt must not let rank 0 commit early; every
        # rank removes its own before DCP's first collective, rank 0 gathers after DCP's last.
        (d / done_file(self.rank)).unlink(missing_ok=True)
        fault = crash_in_save(step, self.rank)  # hits this rank's first (largest) file
        files = dcpio.write_sharded(d, state, self.group, fault if dcpio.nbytes(state) else None)
        # Durable, and its folder fsync also makes the names of the DCP files above durable.
        atomic_write(d / rank_file(self.rank), blob, fault=None if dcpio.nbytes(state) else fault)
        files[rank_file(self.rank)] = rawio.digest(blob)
        # Only rank 0 reads the record, before it commits, and the commit marker repeats it: a
        # power cut that loses it loses nothing (whole, by the rename; no fsync needed).
        atomic_write(d / done_file(self.rank), json.dumps(files), durable=False)

    @contextlib.contextmanager
    def _stage(self, step: int, d: Path, needed: int, peer_failure_discards: bool) -> Iterator[None]:
        """One stage of a save, ended by the ranks' agreement on it: a failure here says why in
        one line (after removing this rank's files of the step, so a full disk is not kept
        full); a failure elsewhere stops this rank quietly. Every rank agrees exactly once per
        stage, failure or not, so none waits in a collective the others skipped. DCP's own
        collectives report a peer's failure on every rank: it counts as the peer's."""
        try:
            try:
                yield
            except dcpio.CheckpointException as exc:
                raise _own_failure(exc, self.rank) or _PeerFailed() from None
        except OSError as exc:
            self._discard(d)
            first = self._agree(False)
            self._remove_if_empty(d)
            if first is not None and first != self.rank:  # a lower rank failed too and says why (once)
                raise PeerSaveFailed(step) from exc
            raise SaveFailed(describe_write_failure(f"checkpoint save to {d}", d, exc, needed)) from exc
        except _PeerFailed:
            self._agree(False, own=False)
            self._discard(d)
            self._remove_if_empty(d)
            raise PeerSaveFailed(step) from None
        except BaseException:
            self._agree(False, own=False)  # a bug or a busy run directory: its own error says so
            raise
        if self._agree(True) is not None:
            if peer_failure_discards:
                self._discard(d)
                self._remove_if_empty(d)
            raise PeerSaveFailed(step)

    def _agree(self, ok: bool, own: bool = True) -> int | None:
        """None if every rank says ``ok``, else the lowest rank that failed on its own (the
        world size if none did)."""
        if self.agree is not None and not self.async_save:
            return self.agree(ok, own=own)
        return None if ok else (self.rank if own else self.world_size)

    def _discard(self, d: Path) -> None:
        """Remove this rank's files of an uncommitted step (never of a committed one)."""
        if (d / COMMIT_MARKER).exists():
            return
        for path in (*dcpio.own_files(d, self.rank), d / rank_file(self.rank), d / done_file(self.rank)):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def _remove_if_empty(self, d: Path) -> None:
        """Rank 0 removes a failed step's folder once it is empty; only after the ranks agreed,
        so that no peer is still writing into it (a peer then failed with "no such file or
        directory" instead of its own reason). Best effort: a peer may still be removing its files."""
        if self.rank == 0:
            with contextlib.suppress(OSError):
                d.rmdir()

    def _gather_manifest(self, d: Path) -> dict:
        """Every rank's file records, once all are there (rank 0, before it commits)."""
        def missing() -> list[int]:
            return [r for r in range(self.world_size) if not (d / done_file(r)).exists()]

        try:
            # The other ranks usually finish first (rank 0 also writes the model): start
            # with short pauses, then back off so a slow file system is not hammered.
            poll_until(lambda: not missing(), self.commit_timeout_s, interval_s=0.01, backoff=1.5,
                       max_interval_s=0.25, what=f"every rank's part of {d}")
        except PollTimeout:
            raise CheckpointError(f"rank {missing()[0]} did not finish its part of {d} in "
                                  f"{self.commit_timeout_s:.0f} s; not committed") from None
        manifest: dict = {}
        for r in range(self.world_size):
            manifest.update(json.loads((d / done_file(r)).read_text()))
        return manifest

    def _prune(self) -> None:
        """Keep the newest ``keep`` committed steps; drop uncommitted leftovers older than them.
        The commit markers go first, durably, here; deleting the files (a large checkpoint's
        blocks take a while to free) goes on in a thread while training does, joined before
        the next prune and by :meth:`wait`. A crash meanwhile leaves uncommitted folders, which
        are never loaded and which the next prune removes."""
        self._join_pruner()
        committed = self.committed_steps()
        keep = set(committed[-self.keep:])
        newest = committed[-1] if committed else -1
        doomed = [(step, d) for step, d in self.layout.step_dirs().items()
                  if step not in keep and (step in committed or step < newest)]
        for _, d in doomed:
            _uncommit(d)
        if doomed:
            # Not a daemon: an interpreter that exits finishes the deletion first.
            self._pruner = threading.Thread(target=self._remove_all, args=(doomed,), name="checkpoint-prune")
            self._pruner.start()

    @staticmethod
    def _remove_all(doomed: list[tuple[int, Path]]) -> None:
        for step, d in doomed:
            try:
                _remove_checkpoint(step, d)
            except OSError as exc:  # an uncommitted leftover: the next prune tries again
                _logger.warning("hpcorch: could not remove old checkpoint %s: %s", d, exc)

    def _join_pruner(self) -> None:
        if self._pruner is not None:
            self._pruner.join()
            self._pruner = None

    def clean_leftovers(self) -> None:
        """What writers killed halfway left (rank 0, at start, before any rank writes; the run
        directory's lease says no other writer lives): uncommitted folders older than the
        newest committed step (a prune or a save cut short, which no later prune of a finished
        run would reach) and temporary files (a commit marker being written)."""
        committed = self.committed_steps()
        newest = committed[-1] if committed else -1
        for step, d in self.layout.step_dirs().items():
            if step < newest and step not in committed:
                _remove_checkpoint(step, d)
            else:
                remove_dead_temporaries(d)

    # ----- finding and loading --------------------------------------------------------------
    def committed_steps(self) -> list[int]:
        """Steps with a commit marker, oldest first."""
        return self.layout.committed_steps()

    def load(self, step: int, target: dict | None = None) -> tuple[dict, dict | None, dict]:
        """(state, this rank's local state or None, commit record) of ``step``.

        A DCP checkpoint loads into ``target`` in place (a collective on ``group``; resharded by
        name to whatever layout ``target`` has); without ``target`` the whole state is read in
        this one process. Each rank checks every file it reads (whole, against the size and
        digest in the commit record) before using it; a mismatch on any rank fails the load on
        every rank. A checkpoint of the format before DCP returns its full ``shared.pt`` state.
        """
        d = self.layout.step_dir(step)
        try:
            record = json.loads((d / COMMIT_MARKER).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{d}: not a committed checkpoint ({exc})") from None
        files = record["files"]
        if SHARED_FILE in files:
            return self._load_shared(d, record)
        local, error = None, None
        if rank_file(self.rank) in files:
            try:
                local = _deserialize(_verified(d, rank_file(self.rank), files))
            except CheckpointError as exc:
                error = str(exc)  # raised inside DCP's read, so that every rank gives up together
        try:
            if target is None:
                if error:
                    raise CheckpointError(error)
                target = dcpio.read_full(d, files)
            else:
                dcpio.read_sharded(d, target, self.group, files, error)
        except dcpio.CheckpointException as exc:
            raise CheckpointError(_first_failure(exc)) from None
        except dcpio.DigestMismatch as exc:
            raise CheckpointError(str(exc)) from None
        return target, local, record

    def _load_shared(self, d: Path, record: dict) -> tuple[dict, dict | None, dict]:
        """The format before DCP: every file read whole and verified, then deserialized."""
        blobs = {name: _verified(d, name, record["files"]) for name in record["files"]}
        own = blobs.get(rank_file(self.rank))
        return _deserialize(blobs[SHARED_FILE]), (_deserialize(own) if own else None), record

    def load_latest(self, log: Callable[[str], None] = _logger.info,
                    target: dict | None = None) -> tuple[int, dict, dict | None, dict] | None:
        """The newest committed checkpoint that verifies, as (step, state, local, record);
        corrupted ones are reported through ``log`` and skipped; None if there is none."""
        for step in reversed(self.committed_steps()):
            try:
                return (step, *self.load(step, target))
            except CheckpointError as exc:
                log(f"hpcorch: skipping corrupted checkpoint: {exc}")
        return None


class _PeerFailed(Exception):
    """Inside a stage: DCP reported another rank's failure, none of this one's."""


def _own_failure(exc: BaseException, rank: int) -> BaseException | None:
    """This rank's own exception inside DCP's gathered failure, if it had one."""
    mine = exc.failures.get(rank) if hasattr(exc, "failures") else None
    return mine[0] if mine else None


def _first_failure(exc: BaseException) -> str:
    """One line for a failed DCP load: the first rank's error (a digest mismatch says which file)."""
    failures = getattr(exc, "failures", {})
    for rank in sorted(failures):
        return f"{failures[rank][0]}"
    return str(exc).splitlines()[0]


def _verified(d: Path, name: str, files: dict) -> bytes:
    """``name``'s bytes, checked against the commit record's size and digest."""
    try:
        return dcpio.read_verified(d / name, files)
    except dcpio.DigestMismatch as exc:
        raise CheckpointError(str(exc)) from None


def remove_dead_temporaries(folder: Path) -> None:
    """Remove the temporary files in ``folder`` (``NAME.HOST.PID.THREAD.tmp``, see
    :func:`hpcorch.util.fileio.atomic_write`; DCP's ``.metadata.tmp``) whose writer is gone;
    never one of a process alive on this host. Call it when no writer of this run may be
    writing there (the caller knows why)."""
    host = socket.gethostname().split(".")[0]
    for path in folder.glob("*.tmp"):
        writer = writer_of(path)
        if writer is not None and writer[0] == host and _alive(writer[1]):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _uncommit(folder: Path) -> None:
    """Remove a checkpoint's commit marker, durably: from here on it is never loaded."""
    marker = folder / COMMIT_MARKER
    if marker.exists():
        marker.unlink()
        fsync_dir(folder)


def _remove_checkpoint(step: int, folder: Path) -> None:
    """Delete a checkpoint folder, its commit marker first and durably: a crash halfway
    through leaves an uncommitted folder (ignored, and removed by a later prune), never a
    committed one with files missing."""
    _uncommit(folder)
    if not folder.exists():
        return
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        crash_in_prune(step)
    shutil.rmtree(folder, ignore_errors=True)
