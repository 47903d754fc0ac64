"""Node ranges: ``resources.nodes`` as a count, ``"M-N"`` or ``{min: M, max: N}``.

A range lets Slurm start the job on as many nodes within it as are free (``--nodes=M-N``); the
trainer re-derives data parallelism and gradient accumulation from the world size each attempt
gets, with the global batch as written. Not every count can hold the batch, so a job keeps the
list of counts that can (:func:`valid_counts`, like DeepSpeed elasticity's ``valid_gpus``).
Pure Python: the plan, the renderer and the batch script's helpers share it.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from hpcorch.errors import shown
from hpcorch.spec.schema import SLURM_MAX16, Invalid

_RANGE = re.compile(r"\s*([0-9]{1,6})\s*-\s*([0-9]{1,6})\s*")
# ASCII digits only: str.isdigit() accepts "²" (which int() refuses) and 5,000-digit strings
# (beyond int()'s limit); both would end in a traceback instead of this module's message.
_COUNT = re.compile(r"\s*([0-9]{1,6})\s*")
_EXPECTED = "a node count, 'M-N' or {min: M, max: N} with 1 <= M <= N <= " + str(SLURM_MAX16)


def parse_nodes(value: object, key: str = "nodes") -> tuple[int, int]:
    """``(min, max)`` of a ``resources.nodes`` value; raises :class:`Invalid` naming ``key``."""
    if isinstance(value, bool):
        raise Invalid(key, f"expected {_EXPECTED}, got {shown(value)}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        if m := _RANGE.fullmatch(value):
            lo, hi = int(m[1]), int(m[2])
        elif m := _COUNT.fullmatch(value):  # "4": a count written as text
            lo = hi = int(m[1])
        else:
            raise Invalid(key, f"expected {_EXPECTED}, got {shown(value)}")
    elif isinstance(value, dict):
        if set(value) != {"min", "max"} or any(type(v) is not int for v in value.values()):
            raise Invalid(key, f"expected {_EXPECTED}, got {shown(value)}")
        lo, hi = value["min"], value["max"]
    else:
        raise Invalid(key, f"expected {_EXPECTED}, got {shown(value)}")
    if lo < 1 or hi < 1:
        raise Invalid(key, f"expected a positive number of nodes ({_EXPECTED}), got {shown(value)}")
    if lo > hi:
        raise Invalid(key, f"expected min <= max ({_EXPECTED}), got {shown(value)}")
    if hi > SLURM_MAX16:
        raise Invalid(key, f"expected at most {SLURM_MAX16} (Slurm's largest node count), got {shown(value)}")
    return lo, hi


def show(lo: int, hi: int) -> str:
    """``"M-N"`` for a range, ``"N"`` for one count: Slurm's ``--nodes`` form."""
    return str(hi) if lo == hi else f"{lo}-{hi}"


def valid_counts(lo: int, hi: int, runs: Callable[[int], bool]) -> list[int]:
    """The node counts in ``lo..hi`` (ascending) on which ``runs(count)`` says the job can run."""
    return [n for n in range(lo, hi + 1) if runs(n)]


def nearby(lo: int, hi: int, runs: Callable[[int], bool], count: int = 2) -> list[int]:
    """Up to ``count`` valid node counts below ``lo`` and above ``hi`` (nearest first), for an
    error that says which ranges would work. Looks no further than 4 x ``hi`` (+64)."""
    below = _first(range(lo - 1, 0, -1), runs, count)
    above = _first(range(hi + 1, min(SLURM_MAX16, 4 * hi + 64) + 1), runs, count)
    return sorted(below) + above


def _first(candidates: range, runs: Callable[[int], bool], count: int) -> list[int]:
    """The first ``count`` of ``candidates`` that ``runs``, trying no more than needed."""
    found = []
    for n in candidates:
        if len(found) == count:
            break
        if runs(n):
            found.append(n)
    return found


def largest_valid(counts: list[int], allocated: int) -> int | None:
    """The largest of ``counts`` that ``allocated`` nodes can hold, or None."""
    fitting = [n for n in counts if n <= allocated]
    return max(fitting) if fitting else None
