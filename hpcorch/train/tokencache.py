"""Text sources tokenized once, kept as a flat token file and memory-mapped on every start.

Without it each rank of each start listed, read and concatenated the text again (the stdlib
source: ~1,800 files). With it a start lists and stats the files (their fingerprint, the
cache key), then maps the cached tokens: the pages are shared by the ranks of a node through
the page cache instead of one private copy each.

The key is a hash of the tokenizer, the source kind, ``max_bytes`` and each file's path, size
and modification time (the source's contents are not read to look the cache up: that reading
is what the cache saves). Any change to a file, a file added or removed, another tokenizer or
another cap gives another key, hence another file; the tokens themselves carry their sha256 in
the side file, whose token count is checked against the file's size on every start. Files are
written whole and fsynced under a unique temporary name, then linked to their name unless a
racing builder (one per node on a shared cache folder) linked the same bytes first: a reader
sees a complete file or none, and no file is ever replaced under a rank that has it mapped.

The folder is bounded (:meth:`TokenCache.prune`, after each file written, as the user YAML
cache prunes its own, :func:`hpcorch.spec.usercache.prune`): token files not used for
:data:`MAX_AGE_S`, then the least recently used beyond :data:`MAX_BYTES` in all, and temporary
files of writers that died. A file in use is never removed: every process that maps one holds a
shared ``flock`` on it for its life, and the pruner removes only what it can lock exclusively
(then the token file before its side file: a prune cut short leaves an entry that looks
incomplete, which the next start rebuilds). Each use marks the file used (its mtime).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcorch.spec.usercache import TMP_AGE_S, scan
from hpcorch.util.fileio import fsync_dir

log = logging.getLogger("hpcorch.train")

# How text becomes tokens: one token per byte (the byte's value). Another tokenizer must
# use another name, so that no cache built by this one is taken for its output.
TOKENIZER = "bytes-v1"
# A token file's suffix by its width: a named tokenizer's ids need more than a byte.
_SUFFIXES = {"uint8": "u8", "uint16": "u16", "int32": "i32"}
#: Token files not used (mapped by a start) for this long are removed by a prune.
MAX_AGE_S = 30 * 86400
#: The token files of a cache folder together are kept under this size, least recently used out
#: first: a few corpora (the stdlib's top level is ~3 MB as bytes; a prepared corpus is no cache).
MAX_BYTES = 8 * 2**30
# Token files this process has mapped, each with the descriptor that holds its shared lock
# (for the process's life: its mapping lives as long) so that no prune removes it meanwhile.
_held: dict[str, int] = {}


def fingerprint(kind: str, files: list[Path], max_bytes: int, separator: int, tokenizer: str = TOKENIZER) -> str:
    """The cache key of ``files`` (in reading order, each followed by ``separator`` bytes)
    tokenized by ``tokenizer`` (:data:`TOKENIZER`, or a named tokenizer's name and vocabulary
    sha256) up to ``max_bytes``: files past the cap are not read, so they are not part of the
    key either."""
    h = hashlib.sha256(json.dumps({"tokenizer": tokenizer, "source": kind, "max_bytes": max_bytes}).encode())
    total = 0
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        total += st.st_size + separator
        if total >= max_bytes:
            break
    return h.hexdigest()[:32]


def default_folder() -> Path:
    """Where token files are kept: ``$HPCORCH_CACHE``, else ``$XDG_CACHE_HOME/hpcorch/tokens``,
    else ``~/.cache/hpcorch/tokens``. Not the run directory: the tokens of a data set are the
    same for every run of it (the key says so), and a run directory's disk is for checkpoints."""
    if os.environ.get("HPCORCH_CACHE"):
        return Path(os.environ["HPCORCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpcorch" / "tokens"


class TokenCache:
    """Cached token files under ``folder`` (default: :func:`default_folder`)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else default_folder()

    def path(self, key: str, dtype: str = "uint8") -> Path:
        return self.folder / f"tokens-{key}.{_SUFFIXES[dtype]}"

    def tokens(self, key: str, build, dtype: str = "uint8", tokenizer: str = TOKENIZER) -> np.ndarray:
        """The tokens under ``key``: mapped from the cache, else ``build()`` (an array of
        ``dtype``), written once, then mapped, so that every caller gets the same kind of array;
        ``tokenizer`` is recorded in the side file."""
        path = self.path(key, dtype)
        try:
            wrote = False
            for _ in range(4):  # a prune may remove the file between the check and the lock
                if self._complete(path) and _hold(path):
                    break
                tokens = build()
                try:
                    self._write(path, tokens, dtype, tokenizer)
                except OSError as exc:  # a full or read-only cache costs the cache, not the run
                    log.warning("warning: token cache %s not written (%s); tokens kept in memory",
                                self.folder, exc.strerror or exc)
                    return np.ascontiguousarray(tokens, dtype=dtype)
                log.debug("token cache: wrote %s (%d tokens)", path, len(tokens))
                wrote = True
            else:
                return np.ascontiguousarray(tokens, dtype=dtype)
            _mark_used(path)
            if wrote:  # the folder grew: bound it (the file just written is held, so it stays)
                self.prune()
            return _map(path, dtype)
        except PermissionError as exc:  # a cache folder this user may not read: no cache
            log.warning("warning: token cache %s unusable (%s)", self.folder, exc.strerror or exc)
            return np.ascontiguousarray(build(), dtype=dtype)

    def prune(self, max_bytes: int | None = None, max_age_s: float | None = None) -> list[Path]:
        """Remove the token files (with their side files) not used for ``max_age_s`` (default
        :data:`MAX_AGE_S`), then the least recently used while those left exceed ``max_bytes``
        (default :data:`MAX_BYTES`), and temporary files of writers that died; never a file some
        process holds (maps). Returns the token files removed. Never raises: another process
        pruning at once finds some files gone."""
        max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        max_age_s = MAX_AGE_S if max_age_s is None else max_age_s
        now = time.time()
        entries = []  # (last used, size, token file)
        for name, mtime, size, is_tmp in scan(self.folder):
            path = Path(name)
            if is_tmp:
                if now - mtime > TMP_AGE_S:
                    path.unlink(missing_ok=True)
            elif path.name.startswith("tokens-") and path.suffix != ".json":
                entries.append((mtime, size, path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        removed = []
        for mtime, size, path in entries:
            if now - mtime <= max_age_s and total <= max_bytes:
                break
            if _remove_unless_held(path):
                removed.append(path)
                total -= size
        if removed:
            log.info("token cache: pruned %d file(s) from %s", len(removed), self.folder)
        return removed

    @staticmethod
    def _complete(path: Path) -> bool:
        """The token file exists and holds as many tokens as its side file says; a file that
        does not (cut short by a crash the file system did not order) is removed, to be rebuilt:
        a short token array would silently change every sample after it."""
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            if path.stat().st_size == meta["tokens"] * np.dtype(meta.get("dtype", "uint8")).itemsize:
                return True
        except (OSError, ValueError, KeyError, TypeError):
            if not path.exists():
                return False
        log.warning("token cache: %s is incomplete; building it again", path)
        for stale in (path, path.with_suffix(".json")):
            stale.unlink(missing_ok=True)
        return False

    def _write(self, path: Path, tokens: np.ndarray, dtype: str = "uint8", tokenizer: str = TOKENIZER) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = np.ascontiguousarray(tokens, dtype=dtype).tobytes()
        meta = {"tokenizer": tokenizer, "tokens": len(data) // np.dtype(dtype).itemsize, "dtype": dtype,
                "sha256": hashlib.sha256(data).hexdigest()}
        # The side file first: a token file never exists without its description.
        _publish(path.with_suffix(".json"), json.dumps(meta).encode())
        _publish(path, data)


def _publish(path: Path, data: bytes) -> None:
    """Write ``data`` durably to a temporary file of its own (unique even across nodes that
    share the folder: mkstemp's O_EXCL), then link it to ``path`` unless a racing builder got
    there first (its bytes are the same). Never a rename over an existing file: another
    node's ranks may have it mapped, and on NFS a replaced file is gone under them (ESTALE)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a cache is as readable as the run
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _hold(path: Path) -> bool:
    """Take a shared lock on token file ``path`` for this process's life (once per file);
    False if the file was removed before the lock was held (a prune won: build it again)."""
    if str(path) in _held:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a pruner's exclusive lock (a few unlinks)
        mine, there = os.fstat(fd), os.stat(path)
        if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
            raise FileNotFoundError(path)
    except FileNotFoundError:  # the pruner removed it while we waited
        os.close(fd)
        return False
    except OSError as exc:
        # No flock on this file system (Lustre mounted noflock, NFS without its lock daemon): use
        # the file unlocked; a pruner there cannot lock it either, so it never removes it.
        log.debug("token cache: cannot lock %s (%s); using it unlocked", path, exc)
    except BaseException:
        os.close(fd)
        raise
    _held[str(path)] = fd
    return True


def _remove_unless_held(path: Path) -> bool:
    """Remove token file ``path`` and then its side file, if no process holds it (an
    exclusive lock taken without waiting); whether it was removed."""
    try:
        # Writable: NFS carries flock as a POSIX lock, whose exclusive form needs a writable file.
        fd = os.open(path, os.O_RDWR)
    except PermissionError:  # another user's shared cache: a read-only descriptor still locks locally
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink()  # the tokens first: a side file alone is an incomplete entry, rebuilt
        path.with_suffix(".json").unlink(missing_ok=True)
        return True
    except OSError:  # held (in use), or removed by another pruner meanwhile
        return False
    finally:
        os.close(fd)


def _mark_used(path: Path) -> None:
    """Set ``path``'s mtime to now: the prune's "last used" (a shared cache another user owns
    may refuse it; then the file looks older than it is, and a holder still keeps it)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _umask() -> int:
    """The process's umask, read from /proc (setting it to read it back races with threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _map(path: Path, dtype: str = "uint8") -> np.ndarray:
    """A read-only map of a token file (an empty file cannot be mapped: an empty array)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
