"""hpcorch's per-user cache of derived data that every cold command would otherwise recompute:
compiled templates (:mod:`hpcorch.render.sbatch`) and parsed profile and job files
(:func:`parsed`), under ``$XDG_CACHE_HOME/hpcorch`` (default ``~/.cache/hpcorch``).

Everything here is a shortcut that can only be taken when it gives what the slow way gives:

* a folder's name carries a version of what produced its entries (the template compiler's,
  the YAML loader's);
* an entry holds its whole input and is used only if that input equals the one asked about,
  so a hash collision or a stale entry is a miss, never a wrong answer;
* an entry is written under a private temporary name and renamed into place, so a reader sees
  a whole entry or none (no fsync: a lost entry is only recomputed);
* a folder that cannot be made or written, or an entry that cannot be read back, costs only
  the recomputation; errors are never cached (a bad file is parsed, and refused, every time);
* every edited file text adds an entry, so about one write in :data:`PRUNE_EVERY` prunes its
  folder (:func:`prune`): entries unused for :data:`MAX_AGE_S`, the oldest beyond
  :data:`MAX_ENTRIES`, and folders of other versions left untouched as long. Reads never prune
  (an entry read is not touched, so "unused" means "not written": at worst one reparse).
"""
from __future__ import annotations

import functools
import hashlib
import marshal
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_MISSING = object()

#: Entries a cache folder keeps at most; the oldest (by mtime) beyond it are removed.
MAX_ENTRIES = 1000
#: Entries, and folders of other versions, not written for this long are removed.
MAX_AGE_S = 30 * 86400
#: About one write in this many prunes (a scan of one folder: cheap, but not for every write).
PRUNE_EVERY = 16
#: A temporary file this old was left by a writer that died; a younger one may be being written.
TMP_AGE_S = 3600


def base() -> Path:
    """``$XDG_CACHE_HOME/hpcorch``, default ``~/.cache/hpcorch``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "hpcorch"


def folder(name: str) -> Path | None:
    """The cache folder ``name`` (made private to the user), or None when it cannot be made."""
    path = base() / name
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return path


def _lookup(where: Path, key: str) -> tuple[Path, Any]:
    """The entry file for ``key`` and its stored value, or ``_MISSING``."""
    entry = where / hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    try:
        stored_key, value = marshal.loads(entry.read_bytes())
    except Exception:  # absent, damaged, of another Python: a miss
        return entry, _MISSING
    return entry, value if stored_key == key else _MISSING


def _store(entry: Path, key: str, value: Any) -> None:
    try:
        data = marshal.dumps((key, value))
    except ValueError:  # not plain data: nothing to keep
        return
    if replace_quietly(entry, data):
        maybe_prune(entry.parent)


def replace_quietly(path: Path, data: bytes) -> bool:
    """Put ``data`` at ``path`` whole or not at all (a temporary file of mkstemp's name, which
    :func:`prune` knows, renamed over it); whether it was written. A cache's write: a folder
    that cannot be written only costs the shortcut next time."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        _unlink(tmp)
        return False
    return True


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:  # gone already (another process pruned it), or not ours to remove
        pass


def maybe_prune(where: Path) -> None:
    """:func:`prune` ``where`` about once in :data:`PRUNE_EVERY` calls (one call per entry
    written), so that a folder stays bounded without scanning it on every write."""
    if PRUNE_EVERY <= 1 or os.urandom(1)[0] % PRUNE_EVERY == 0:
        prune(where)


def prune(where: Path, max_entries: int | None = None, max_age_s: float | None = None) -> None:
    """Remove from the cache folder ``where`` the entries older than ``max_age_s`` (default
    :data:`MAX_AGE_S`) and the oldest beyond ``max_entries`` (default :data:`MAX_ENTRIES`), by
    mtime; temporary files of writers that died; and sibling folders of other versions (same
    name before the last ``-``) not written for ``max_age_s``. Never raises: two processes
    pruning at once each find some files gone, which is fine."""
    import time

    max_entries = MAX_ENTRIES if max_entries is None else max_entries
    max_age_s = MAX_AGE_S if max_age_s is None else max_age_s
    now = time.time()
    entries = []
    for path, mtime, _, is_tmp in scan(where):
        if now - mtime > (TMP_AGE_S if is_tmp else max_age_s):
            _unlink(path)
        elif not is_tmp:
            entries.append((mtime, path))
    entries.sort()
    for _, path in entries[: max(0, len(entries) - max_entries)]:
        _unlink(path)
    prefix = where.name.rpartition("-")[0]
    if not prefix:
        return
    try:
        siblings = [e for e in os.scandir(where.parent) if e.name.startswith(prefix + "-")
                    and e.name != where.name and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for sibling in siblings:
        try:
            if now - sibling.stat(follow_symlinks=False).st_mtime <= max_age_s:
                continue
        except OSError:
            continue
        for path, _, _, _ in scan(Path(sibling.path)):
            _unlink(path)
        try:
            os.rmdir(sibling.path)
        except OSError:  # another process wrote to it meanwhile: it is in use after all
            pass


def scan(where: Path) -> list[tuple[str, float, int, bool]]:
    """``(path, mtime, size, is_temporary)`` of the plain files in ``where`` (a temporary file:
    ``.NAME.*.tmp``, mkstemp's name for an entry being written); [] if it cannot be read."""
    found = []
    try:
        with os.scandir(where) as it:
            for e in it:
                try:
                    if e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        found.append((e.path, st.st_mtime, st.st_size,
                                      e.name.startswith(".") and e.name.endswith(".tmp")))
                except OSError:  # removed since the scan listed it
                    continue
    except OSError:
        pass
    return found


@functools.cache
def _parser_version() -> str:
    """What a parsed entry depends on besides its text: the loader's own source (its rules: tags,
    duplicate keys, YAML 1.1's traps), the installed PyYAML (found without importing it; an
    upgrade rewrites its files) and Python's marshal format."""
    from importlib.util import find_spec

    parts = [sys.version, str(marshal.version)]
    loader = Path(__file__).with_name("yamlparse.py")
    parts.append(hashlib.sha256(loader.read_bytes()).hexdigest())
    spec = find_spec("yaml")
    for origin in (spec.origin,) if spec and spec.origin else ():
        st = os.stat(origin)
        parts.append(f"{origin} {st.st_mtime_ns} {st.st_size}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def parsed(text: str, parse: Callable[[], Any]) -> Any:
    """``parse()`` (the plain data of the YAML ``text``), from the cache when ``text`` was parsed
    before by the same parser; a fresh object each time (callers change it: ``--set``)."""
    try:
        where = folder(f"yaml-{_parser_version()}")
    except OSError:  # the loader's source or PyYAML unreadable: no shortcut
        where = None
    if where is None:
        return parse()
    entry, value = _lookup(where, text)
    if value is not _MISSING:
        return value
    value = parse()
    _store(entry, text, value)
    return value
