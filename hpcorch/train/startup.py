"""Where a rank's start-up went: from the process's real start to its first finished step,
split into phases (interpreter, imports, job, process group, model, data, ...).

Rank 0 records the phases in its ``first_step`` event (``startup_s``), so a slow restart can
be taken apart after the fact (``bench/bench_startup.py`` reads them). Marks cost one
``time.time()`` each.
"""
from __future__ import annotations

import os
import time

# Set in a rank forked by the node launcher (hpcorch.train.forked): the launcher's start.
_process_start: float | None = None


def set_process_start(start: float) -> None:
    """Count this process (and the ranks it forks, which inherit this) as started at ``start``:
    a forked rank's start-up began when its launcher started importing for it."""
    global _process_start
    _process_start = start


def process_start_time() -> float:
    """When this process started (epoch s): the kernel's record, not when Python got going,
    so the interpreter's own start-up counts.

    On Linux, the process's age on the boot clock (``/proc/self/stat`` start ticks against
    CLOCK_BOOTTIME) subtracted from now: psutil's ``create_time`` adds the ticks to the boot
    time of ``/proc/stat``, which is whole seconds, so it can be up to 1 s early (0.86 s on
    the machine this was measured on), which is most of a small job's start-up. In a rank forked
    by the node launcher: the launcher's start (:func:`set_process_start`)."""
    if _process_start is not None:
        return _process_start
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(age, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return psutil.Process().create_time()


class StartupClock:
    """Named marks from the process start on; each phase is the time since the previous mark."""

    def __init__(self, start: float | None = None):
        self.start = process_start_time() if start is None else start
        self._marks: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        """``phase`` ends now (it began at the previous mark, or at the process start)."""
        self._marks.append((phase, time.time()))

    def phases(self) -> dict[str, float]:
        """Seconds per phase in the order they happened; a phase marked twice adds up."""
        out: dict[str, float] = {}
        previous = self.start
        for name, at in self._marks:
            out[name] = round(out.get(name, 0.0) + at - previous, 4)
            previous = at
        return out
