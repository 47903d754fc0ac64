"""Compiled dataclass methods kept across processes, in the user cache (:mod:`hpcorch.spec.usercache`).

``dataclasses`` writes each class's ``__init__``, ``__repr__``, ``__eq__``, ... as Python source
and compiles it with ``exec`` when the class is defined: about 270 compiles for the ~70 config
classes a cold ``submit --dry-run`` defines, a fifth of its time. :func:`install` gives the
``dataclasses`` module its own ``exec`` (a module global, which shadows the builtin for that
module only and leaves its code untouched) that takes the compiled code of a source text from
``$XDG_CACHE_HOME/hpcorch/classes-V/MODULE`` when that exact text was compiled before (one file
per module, read when the module defines its first class: a command reads only its own modules').

It can only give what ``exec`` gives:

* an entry's key is the whole source text, matched exactly (a dict lookup), and its value is
  ``compile(text, "<string>", "exec")`` as ``exec`` compiles it (``dataclasses`` has no
  ``__future__`` flags to inherit); ``V`` covers the interpreter (its version and bytecode
  magic) and marshal's format, so an entry is never run by another Python;
* only hpcorch's own classes go through the cache (their module's name starts with
  ``hpcorch.``); every other call is the builtin ``exec``, unchanged;
* a file that cannot be read or is damaged is ignored (its module's methods compile as before);
  the new entries of a process are written once at its exit, each file under a temporary name
  renamed into place, and a folder that cannot be written only costs the compiles next time.
"""
from __future__ import annotations

import builtins
import functools
import marshal
import os
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType

from hpcorch.spec.usercache import base, folder, maybe_prune, replace_quietly

#: Entries a module's file keeps at most; past it a process writes only the texts it used itself
#: (classes edited again and again leave old texts behind).
MAX_ENTRIES = 500
_PREFIX = "hpcorch."

_codes: dict[str, dict[str, CodeType]] = {}  # module -> source text -> its compiled code
_used: dict[str, set[str]] = {}              # module -> the texts this process compiled or took
_added: set[str] = set()                     # modules of which this process compiled a new text


# One "-": usercache.prune takes the name before the last one as the family of versions.
_FOLDER = "classes-" + f"{sys.implementation.cache_tag}_{MAGIC_NUMBER.hex()}_{marshal.version}".replace("-", "_")


@functools.lru_cache(maxsize=4)
def _where(xdg_cache_home: str | None, home: str | None) -> str:
    """The cache folder's path for this ``$XDG_CACHE_HOME`` and ``$HOME`` (a string: ~25 reads per command)."""
    return str(base() / _FOLDER)


def _load(module: str) -> dict[str, CodeType]:
    """The stored entries of ``module``; {} when absent, unreadable or damaged."""
    try:
        with open(os.path.join(_where(os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME")), module), "rb") as f:
            stored = marshal.loads(f.read())
    except Exception:  # absent, damaged, cut short: compile its methods, as without a cache
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _exec(source, globals=None, locals=None, /, **kwargs):  # noqa: A002 - exec's own parameter names
    """``exec`` for the ``dataclasses`` module: the cached code of an hpcorch class's source."""
    module = globals.get("__name__", "") if isinstance(globals, dict) else ""
    if kwargs or not isinstance(source, str) or not isinstance(module, str) or not module.startswith(_PREFIX):
        if isinstance(source, str):  # else exec would inherit this module's `annotations` future
            source = compile(source, "<string>", "exec", dont_inherit=True)
        return builtins.exec(source, globals, locals, **kwargs)
    codes = _codes.get(module)
    if codes is None:
        codes = _codes[module] = _load(module)
        _used[module] = set()
    code = codes.get(source)
    if code is None:
        # What exec(source) compiles: file "<string>", no flags inherited (dataclasses has none).
        code = codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
        _added.add(module)
    _used[module].add(source)
    return builtins.exec(code, globals, locals)


def _save() -> None:
    """At exit: rewrite the file of each module of which this process compiled a new text."""
    if not _added:
        return
    where = folder(_FOLDER)
    if where is None:
        return
    for module in sorted(_added):
        entries = {**_load(module), **_codes[module]}  # what another process wrote meanwhile, kept
        if len(entries) > MAX_ENTRIES:
            entries = {text: _codes[module][text] for text in _used[module]}
        _write(where / module, entries)
    maybe_prune(where)  # also removes the folders of other Pythons left unused


def _write(path: Path, entries: dict[str, CodeType]) -> None:
    try:
        data = marshal.dumps(entries)
    except ValueError:
        return
    replace_quietly(path, data)


def install() -> None:
    """Route the ``dataclasses`` module's ``exec`` through the cache (once per process)."""
    import atexit
    import dataclasses

    if getattr(dataclasses, "exec", None) is _exec:
        return
    dataclasses.exec = _exec
    atexit.register(_save)
