"""Slurm's own forms for time limits, memory sizes and host lists."""
from __future__ import annotations

import re

import hostlist as _hostlist

UNLIMITED = None  # a time limit of None means Slurm's UNLIMITED

_TIME_RE = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"  # d-h[:m[:s]]
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"                    # m | m:s | h:m:s
)


def parse_time(text: str | int) -> int | None:
    """Seconds in a Slurm time limit (``90``, ``2:00:00``, ``1-00:00:00``); None if unlimited.

    Forms as ``sbatch --time`` accepts them: minutes, minutes:seconds, hours:minutes:seconds,
    days-hours, days-hours:minutes, days-hours:minutes:seconds.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a Slurm time limit, got {text!r}")
    if isinstance(text, int):
        text = str(text)
    if text.strip().lower() in ("unlimited", "infinite"):
        return UNLIMITED
    m = _TIME_RE.match(text.strip())
    if not m:
        raise ValueError(f"expected a Slurm time such as 90, 2:00:00 or 1-00:00:00, got {text!r}")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "days" in g:
        seconds = g["days"] * 86400 + g["dh"] * 3600 + g.get("dm", 0) * 60 + g.get("ds", 0)
    elif "c" in g:
        seconds = g["a"] * 3600 + g["b"] * 60 + g["c"]
    else:
        seconds = g["a"] * 60 + g.get("b", 0)
    if seconds <= 0:
        raise ValueError(f"expected a positive time limit, got {text!r}")
    return seconds


def format_time(seconds: int | None) -> str:
    """The canonical ``D-HH:MM:SS`` form Slurm prints (``UNLIMITED`` for None)."""
    if seconds is None:
        return "UNLIMITED"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{hms}" if days else hms


def minutes_ceil(seconds: int) -> int:
    return -(-seconds // 60)


_MEM_RE = re.compile(r"^(?P<n>\d+)(?P<unit>[KMGT]?)B?$", re.IGNORECASE)
_MEM_FACTORS = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_memory_mb(text: str | int) -> int:
    """Megabytes in a Slurm memory size (``4000``, ``4000M``, ``64G``); plain numbers are MB."""
    if isinstance(text, bool):
        raise ValueError(f"expected a memory size, got {text!r}")
    m = _MEM_RE.match(str(text).strip())
    if not m:
        raise ValueError(f"expected a memory size such as 4000M or 64G, got {text!r}")
    number, unit = int(m["n"]), m["unit"].upper()
    if unit == "K" and number % 1024:
        raise ValueError(f"expected a memory size in whole megabytes, got {text!r} "
                         f"({number / 1024:.3f}M); write it in M or G")
    mb = number * _MEM_FACTORS[unit]
    if mb < 1:
        raise ValueError(f"expected at least 1M of memory, got {text!r}")
    return int(mb)


_HOSTLIST_PART = re.compile(r"^[A-Za-z0-9._-]+(\[\d+(-\d+)?(,\d+(-\d+)?)*\])?$")


def expand_hostlist(expr: str) -> list[str]:
    """Host names in a Slurm hostlist (``gpu[001-128,130]``), in Slurm's order."""
    # Slurm (22.05) allows one bracket per element and nothing after it; python-hostlist is laxer.
    parts = re.split(r",(?![^\[]*\])", expr)
    if not all(_HOSTLIST_PART.match(p) for p in parts):
        raise ValueError(f"expected a Slurm hostlist such as node[1-4] or gpu[001-128,130], got {expr!r}")
    try:
        hosts = _hostlist.expand_hostlist(expr)
    except _hostlist.BadHostlist as exc:
        raise ValueError(f"expected a Slurm hostlist such as node[1-4], got {expr!r} ({exc})") from None
    if not hosts or any(not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", h) for h in hosts):
        raise ValueError(f"expected a Slurm hostlist of plain host names, got {expr!r}")
    return hosts


def compress_hostlist(hosts: list[str]) -> str:
    """The shortest Slurm hostlist for ``hosts`` (zero padding kept)."""
    return _hostlist.collect_hostlist(hosts)
