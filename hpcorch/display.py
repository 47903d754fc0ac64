"""Numbers for people: separators, SI prefixes and units in the CLI's tables (JSON keeps raw numbers)."""
from __future__ import annotations

from typing import Any, Callable

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


def duration(seconds: float) -> str:
    """1h, 30m, 1h30m, 45s: the short form of an idle time."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"


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
