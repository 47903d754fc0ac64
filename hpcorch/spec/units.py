"""Slurm's own forms for time limits, memory sizes and host lists."""
from __future__ import annotations

import re

UNLIMITED = None  # a time limit of None means Slurm's UNLIMITED

_TIME_RE = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"  # d-h[:m[:s]]
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"                    # m | m:s | h:m:s
)


# Slurm keeps time limits as 32-bit minutes: 0xfffffffe is NO_VAL and 0xffffffff INFINITE, so
# the largest real limit is one below.
SLURM_MAX_MINUTES = 2**32 - 3


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
    if -(-seconds // 60) > SLURM_MAX_MINUTES:
        raise ValueError(f"expected at most {SLURM_MAX_MINUTES} minutes (Slurm reads 4294967294 minutes "
                         f"and more as 'no value'/'unlimited'; write UNLIMITED for that), got {text!r}")
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


# Slurm (22.05) allows one bracket per element and nothing after it; python-hostlist is laxer
# (and its splitting and collecting are quadratic in the number of names), so both are ours.
MAX_HOSTS = 65536  # per expression: far above any cluster, far below a typo's allocation
_PREFIX = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_ELEMENT = re.compile(rf"({_PREFIX})(?:\[([^\]\[]*)\])?(,|\Z)")  # \Z: '$' would pass a trailing newline
_RANGE = re.compile(r"^(\d{1,18})(?:-(\d{1,18}))?$")  # 18 digits: any int, never a huge one
_TRAILING_DIGITS = re.compile(r"^(.*?[^0-9])(\d+)$")


def brief_hosts(hosts: list[str], limit: int = 3) -> str:
    """The first ``limit`` names and how many more: error messages stay one readable line."""
    shown = ", ".join(hosts[:limit])
    return shown if len(hosts) <= limit else f"{shown} and {len(hosts) - limit} more"


def _shown(expr: str, limit: int = 60) -> str:
    """``expr`` for an error message, cut short: a 16k-host list must not fill the terminal."""
    return repr(expr) if len(expr) <= limit else f"{expr[:limit]!r}... ({len(expr)} characters)"


def _bad(expr: str, why: str = "") -> ValueError:
    return ValueError(f"expected a Slurm hostlist such as node[1-4] or gpu[001-128,130], "
                      f"got {_shown(expr)}{f' ({why})' if why else ''}")


def _ranges(expr: str, body: str) -> list[tuple[int, int, int]]:
    """``(low, high, width)`` for each item of a bracket body such as ``001-128,130``."""
    out = []
    for item in body.split(","):
        m = _RANGE.match(item)
        if not m:
            raise _bad(expr, f"bad range {item!r}")
        low, high = int(m[1]), int(m[2] or m[1])
        if high < low:
            raise _bad(expr, f"range {item!r} runs backwards")
        out.append((low, high, len(m[1])))  # Slurm pads to the width of the low bound
    return out


def _elements(expr: str) -> list[tuple[str, list[tuple[int, int, int]] | None]]:
    """The comma-separated elements of ``expr`` in one left-to-right pass (linear in its length)."""
    out, pos = [], 0
    while True:
        m = _ELEMENT.match(expr, pos)
        if not m:
            raise _bad(expr)
        out.append((m[1], None if m[2] is None else _ranges(expr, m[2])))
        if not m[3]:
            return out
        pos = m.end()
        if pos == len(expr):
            raise _bad(expr, "ends with a comma")


def _count(elements: list[tuple[str, list[tuple[int, int, int]] | None]]) -> int:
    return sum(1 if rs is None else sum(high - low + 1 for low, high, _ in rs) for _, rs in elements)


def count_hostlist(expr: str) -> int:
    """How many names ``expr`` spells (duplicates included), without materialising them."""
    return _count(_elements(expr))


def expand_hostlist(expr: str, max_hosts: int = MAX_HOSTS) -> list[str]:
    """Host names in a Slurm hostlist (``gpu[001-128,130]``), in Slurm's order, duplicates dropped.

    Raises ValueError for what Slurm rejects, and for more than ``max_hosts`` names (counted
    before any is made, so ``gpu[1-100000000]`` fails at once instead of filling memory).
    """
    elements = _elements(expr)
    total = _count(elements)
    if total > max_hosts:
        raise ValueError(f"hostlist {_shown(expr)} names {total} hosts; at most {max_hosts} "
                         f"are allowed in one expression")
    hosts: dict[str, None] = {}
    for prefix, ranges in elements:
        if ranges is None:
            hosts[prefix] = None
            continue
        for low, high, width in ranges:
            hosts.update(dict.fromkeys(f"{prefix}{i:0{width}d}" for i in range(low, high + 1)))
    return list(hosts)


def compress_hostlist(hosts: list[str]) -> str:
    """A short Slurm hostlist for ``hosts``: sorted, duplicates dropped, zero padding kept.

    Only the trailing number of a name is bracketed (``rack1-n[01-32]``), one bracket per element
    as Slurm writes it, and each element has one width, so n1 and n01 stay apart. One sort, then
    each host is looked at once: O(n log n), where python-hostlist's collect_hostlist re-sorts
    every pass.
    """
    plain: set[str] = set()
    numbered: dict[str, tuple[str, int, str]] = {}
    for host in hosts:
        m = _TRAILING_DIGITS.match(host)
        if m:
            numbered[host] = (m[1], int(m[2]), m[2])
        else:
            plain.add(host)
    groups: dict[tuple[str, int], list[list[int]]] = {}  # (prefix, width) -> [[low, high], ...]
    open_runs: dict[tuple[str, int], list[int]] = {}     # the latest run of each (prefix, width)
    for prefix, value, digits in sorted(numbered.values(), key=lambda p: (p[0], p[1], len(p[2]))):
        run = next((r for w in _widths(digits) if (r := open_runs.get((prefix, w))) and r[1] == value - 1),
                   None)
        if run is not None:
            run[1] = value
        else:  # a new run joins an element whose width writes it (n9,n11 is n[9,11]), else starts one
            key = next(((prefix, w) for w in _widths(digits) if (prefix, w) in groups), (prefix, len(digits)))
            open_runs[key] = [value, value]
            groups.setdefault(key, []).append(open_runs[key])
    return ",".join(sorted(plain) + [_element(prefix, width, runs) for (prefix, width), runs in groups.items()])


def _widths(digits: str) -> range:
    """The padding widths that write this number as ``digits``: exactly its length if it has a
    leading zero (``09``), else any up to its length (``10`` is 10 at width 1 or 2)."""
    n = len(digits)
    return range(n, n - 1, -1) if digits[0] == "0" and n > 1 else range(n, 0, -1)


def _element(prefix: str, width: int, runs: list[list[int]]) -> str:
    if len(runs) == 1 and runs[0][0] == runs[0][1]:
        return f"{prefix}{runs[0][0]:0{width}d}"  # n1, never n[1]
    items = (f"{lo:0{width}d}" if lo == hi else f"{lo:0{width}d}-{hi:0{width}d}" for lo, hi in runs)
    return f"{prefix}[{','.join(items)}]"
