"""Environment values that expand when the job runs, and ``environment.prepend``.

One small grammar (:func:`split_refs`): ``$NAME`` and ``${NAME}`` expand when the job runs,
``$$`` is a literal ``$``, and every other ``$`` is refused, so no command substitution,
arithmetic or ``${x:-...}`` can be written at all. The template writes such values through
``|expand`` and ``|prepend`` (see :mod:`hpcorch.render.sbatch`), built by :func:`shell_word` and
:func:`prepend_word` here.
"""
from __future__ import annotations

import re
import shlex

from hpcorch.spec.schema import ENV_NAME_RE, RESERVED_ENV, RESERVED_ENV_PREFIXES, Invalid

# ----- expandable values ----------------------------------------------------------------------
_REF = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_DQ_SPECIAL = re.compile(r'([\\"$`])')
_EXPANDABLE_HELP = ("only $NAME, ${NAME} (expanded when the job runs) and $$ (a literal $) may be "
                    "written (quotes and backticks stay literal); no $(...), ${NAME:-...} or $1")


def split_refs(text: str) -> list[tuple[str, bool]]:
    """``text`` as (literal, False) and (variable name, True) pieces; ValueError on any other
    ``$`` or a control character (a tab excepted)."""
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
        raise ValueError(f"expected a single line of text, got a control character in {text!r}")
    pieces: list[tuple[str, bool]] = []
    literal, pos = "", 0
    while (dollar := text.find("$", pos)) >= 0:
        literal += text[pos:dollar]
        match = _REF.match(text, dollar)
        if match is None:
            raise ValueError(f"{text!r}: {_EXPANDABLE_HELP}")
        pos = match.end()
        if match.group(1):
            literal += "$"
            continue
        if literal:
            pieces.append((literal, False))
        literal = ""
        pieces.append((match.group(2) or match.group(3), True))
    literal += text[pos:]
    if literal:
        pieces.append((literal, False))
    return pieces


def check_expandable(key: str, value) -> None:
    """Raise :class:`Invalid` at ``key`` unless ``value`` follows the expansion grammar."""
    try:
        split_refs(str(value))
    except ValueError as exc:
        raise Invalid(key, str(exc)) from None


def _double_quoted(pieces: list[tuple[str, bool]]) -> str:
    return "".join("${" + text + "}" if ref else _DQ_SPECIAL.sub(r"\\\1", text) for text, ref in pieces)


def shell_word(value) -> str:
    """One shell word for unquoted context: exactly ``shlex.quote`` of the literal text when
    nothing expands (so scripts without references are unchanged), else a double-quoted word in
    which only ``${NAME}`` is live and ``\\ " $ `` `` are escaped."""
    pieces = split_refs(str(value))
    if not any(ref for _, ref in pieces):
        return shlex.quote("".join(text for text, _ in pieces))
    return '"' + _double_quoted(pieces) + '"'


def prepend_word(name: str, dirs: list[str]) -> str:
    """``"d1:d2${NAME:+:$NAME}"``: ``dirs`` before the variable's current value, with no empty
    entry when it was unset (an empty PATH entry means the current folder)."""
    if not ENV_NAME_RE.fullmatch(name):
        raise ValueError(f"expected an environment variable name, got {name!r}")
    body = ":".join(_double_quoted(split_refs(d)) for d in dirs)
    return f'"{body}${{{name}:+:${name}}}"'


class UnsetVariable(ValueError):
    """A value names a variable that is unset where it expands."""

    def __init__(self, name: str, value):
        self.name = name
        super().__init__(f"{str(value)!r} names ${name}, which is unset where the job starts")


def expand_with(value, env: dict) -> str:
    """``value`` expanded as the job script's shell would, for launchers without a shell
    (submitit's local controller starts argv lists). An unset name raises
    :class:`UnsetVariable`: the script runs under ``set -u``, where it stops the job, so both
    executors refuse it alike rather than one expanding it to nothing."""
    out = []
    for text, ref in split_refs(str(value)):
        if ref and text not in env:
            raise UnsetVariable(text, value)
        out.append(env[text] if ref else text)
    return "".join(out)


# ----- environment.prepend --------------------------------------------------------------------
# The reserved names a prepend may extend: the point of prepend. Others stay refused (LD_PRELOAD,
# PYTHONPATH: hpcorch's own imports on the ranks must not be shadowed).
PREPENDABLE_RESERVED = frozenset({"PATH", "LD_LIBRARY_PATH"})
_DIR_START = re.compile(r"/|\$\{?[A-Za-z_]")


def check_prepend(prepend: dict) -> None:
    """``{NAME: [dir, ...]}``: absolute folders (or starting with $NAME), no ':' inside one."""
    for name, dirs in prepend.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise Invalid(f"prepend.{name}", "expected an environment variable name (letters, digits, '_')")
        if name not in PREPENDABLE_RESERVED and (name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)):
            raise Invalid(f"prepend.{name}", "is set by the shell, Slurm or hpcorch itself; prepend "
                                             f"may extend {', '.join(sorted(PREPENDABLE_RESERVED))} "
                                             "or names that are not reserved")
        if not dirs:
            raise Invalid(f"prepend.{name}", "expected at least one folder")
        for i, folder in enumerate(dirs):
            key = f"prepend.{name}[{i}]"
            if ":" in folder or not _DIR_START.match(folder):
                raise Invalid(key, f"expected an absolute folder such as /opt/tool/bin or $HOME/bin, "
                                   f"without ':', got {folder!r}")
            check_expandable(key, folder)
