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
  the recomputation; errors are never cached (a bad file is parsed, and refused, every time).
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
    try:
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, entry)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


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
