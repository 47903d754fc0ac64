"""Numbers for people: separators, SI prefixes and units in the CLI's tables (JSON keeps raw numbers)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_PREFIXES = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
# Counts of parameters and tokens use the field's billions (B), not giga.
_COUNT_PREFIXES = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")]


def si(value: float, unit: str = "") -> str:
    """``8.5e8, 'FLOP'`` -> ``854.8 MFLOP``; without a unit, a count: ``1.31e9`` -> ``1.3 B``."""
    for scale, prefix in (_PREFIXES if unit else _COUNT_PREFIXES):
        if abs(value) >= scale:
            return f"{value / scale:,.1f} {prefix}{unit}".rstrip()
    return f"{value:,.4g} {unit}".rstrip()


def count(value: int) -> str:
    """An exact count with thousands separators, and its SI size when that helps reading."""
    return f"{value:,}" if abs(value) < 1e6 else f"{value:,} ({si(value)})"


_UNITS = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")]


def duration(seconds: float) -> str:
    """The two largest units of a time span: ``4h 12m``, ``1d 3h``, ``10m``, ``45s``; under ten
    seconds a tenth counts (``0.4s``: a save or a restart's share is often that small). NaN or
    infinity (a remote status or a hand-edited record carries what it likes) is ``-``."""
    if not math.isfinite(seconds):
        return "-"
    if 0 < seconds < 9.95:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    for i, (size, unit) in enumerate(_UNITS):
        if seconds >= size:
            big, rest = divmod(seconds, size)
            if i + 1 < len(_UNITS) and rest >= _UNITS[i + 1][0]:
                small, name = _UNITS[i + 1]
                return f"{big}{unit} {rest // small}{name}"
            return f"{big}{unit}"
    return "0s"


def percent(share: float | None) -> str:
    """A 0..1 share as ``71.3%``; ``-`` when unknown."""
    return "-" if share is None or not math.isfinite(share) else f"{share * 100:.1f}%"


@dataclass(frozen=True)
class Column:
    """A table column: its header, and whether its cells are numbers (right-aligned)."""

    header: str
    number: bool = False


def table(columns: Sequence[Column], rows: Iterable[Sequence[str]], gap: int = 2) -> list[str]:
    """Aligned lines: a header row, then one line per row; numbers right-aligned, text left,
    no trailing spaces after the last column."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(col.header)] + [len(r[i]) for r in rows]) for i, col in enumerate(columns)]
    out = []
    for cells in [[c.header for c in columns], *rows]:
        parts = [cell.rjust(w) if col.number else cell.ljust(w)
                 for col, cell, w in zip(columns, cells, widths, strict=True)]
        out.append((" " * gap).join(parts).rstrip())
    return out


# Units of the plan summary's raw numbers, by key.
FORMATS: dict[str, Callable[[Any], str]] = {
    "parameters": si,
    "flops_per_token": lambda v: si(v, "FLOP"),
    "tokens_per_step": count,
    "total_tokens": count,
    "peak_pflops": lambda v: f"{v:,.2f} PFLOP/s",
}


def cell(key: str, value: Any) -> str:
    """One value of a key/value table as the CLI prints it."""
    if value is None:
        return "-"
    if key in FORMATS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return FORMATS[key](value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {cell(k, v)}" for k, v in value.items())
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def when(ts: float) -> str:
    """A local time stamp for people: ``2026-11-24 07:15``."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
