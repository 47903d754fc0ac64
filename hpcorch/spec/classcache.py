"""Compiled dataclass methods kept across processes, in the user cache (:mod:`hpcorch.spec.usercache`).

``dataclasses`` writes each class's ``__init__``, ``__repr__``, ``__eq__``, ... as Python source
and compiles it with ``exec`` when the class is defined: about 270 compiles for the ~70 config
classes a cold ``submit --dry-run`` defines, a fifth of its time. :func:`install` gives the
``dataclasses`` module its own ``exec`` (a module global, which shadows the builtin for that
module only and leaves its code untouched) that takes the compiled code of a source text
from ``$XDG_CACHE_HOME/hpcorch/classes-V/methods`` when that exact text was compiled before.

It can only give what ``exec`` gives:

* an entry's key is the whole source text, matched exactly (a dict lookup), and its value is
  ``compile(text, "<string>", "exec")`` as ``exec`` compiles it (``dataclasses`` has no
  ``__future__`` flags to inherit); ``V`` covers the interpreter (its version and bytecode
  magic) and marshal's format, so an entry is never run by another Python;
* only hpcorch's own classes go through the cache (their module's name starts with
  ``hpcorch.``); every other call is the builtin ``exec``, unchanged;
* a file that cannot be read or is damaged is ignored (everything compiles as before); the
  new entries of a process are written once at its exit, to a temporary name renamed into
  place, and a folder that cannot be written only costs the compiles next time.
"""
from __future__ import annotations

import builtins
import marshal
import os
import sys
import tempfile
from importlib.util import MAGIC_NUMBER
from types import CodeType

from hpcorch.spec.usercache import base, folder, maybe_prune

#: Entries the file keeps at most; past it a process writes only the texts it used itself
#: (classes edited again and again leave old texts behind).
MAX_ENTRIES = 4000
_FILE = "methods"
_PREFIX = "hpcorch."

_codes: dict[str, CodeType] = {}   # source text -> its compiled code (loaded, then added to)
_used: set[str] = set()            # the texts this process compiled or took from the cache
_added = False                     # this process compiled a text the file lacked


def _folder_name() -> str:
    # One "-": usercache.prune takes the name before the last one as the family of versions.
    version = f"{sys.implementation.cache_tag}_{MAGIC_NUMBER.hex()}_{marshal.version}".replace("-", "_")
    return f"classes-{version}"


def _load() -> dict[str, CodeType]:
    """The stored entries; {} when absent, unreadable or damaged."""
    path = base() / _folder_name() / _FILE
    try:
        stored = marshal.loads(path.read_bytes())
    except Exception:  # absent, damaged, cut short: compile everything, as without a cache
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _exec(source, globals=None, locals=None, /, **kwargs):  # noqa: A002 - exec's own parameter names
    """``exec`` for the ``dataclasses`` module: the cached code of an hpcorch class's source."""
    name = globals.get("__name__", "") if isinstance(globals, dict) else ""
    if kwargs or not isinstance(source, str) or not name.startswith(_PREFIX):
        return builtins.exec(source, globals, locals, **kwargs)
    global _added
    code = _codes.get(source)
    if code is None:
        # What exec(source) compiles: file "<string>", no flags inherited (dataclasses has none).
        code = _codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
        _added = True
    _used.add(source)
    return builtins.exec(code, globals, locals)


def _save() -> None:
    """At exit: write the entries (this process's new ones added) if it compiled any."""
    if not _added:
        return
    where = folder(_folder_name())
    if where is None:
        return
    entries = {**_load(), **_codes}
    if len(entries) > MAX_ENTRIES:
        entries = {text: _codes[text] for text in _used}
    try:
        data = marshal.dumps(entries)
        fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{_FILE}.", suffix=".tmp")
    except (ValueError, OSError):
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, where / _FILE)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    maybe_prune(where)  # removes folders of other Pythons left unused


def install() -> None:
    """Route the ``dataclasses`` module's ``exec`` through the cache (once per process)."""
    import atexit
    import dataclasses

    if getattr(dataclasses, "exec", None) is _exec:
        return
    _codes.update(_load())
    dataclasses.exec = _exec
    atexit.register(_save)
