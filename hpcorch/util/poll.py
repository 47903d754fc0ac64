"""Waiting for something to become true: one loop with a deadline and back-off.

Every wait in hpcorch (a job state, a daemon's socket, a rank's part of a checkpoint, a log
follower asking the scheduler) goes through :func:`poll_until`, so each has a deadline and none
hammers a scheduler: like submitit's watcher, the interval grows from ``interval_s`` by
``backoff`` up to ``max_interval_s``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PollTimeout(TimeoutError):
    """The condition did not hold before the deadline; the message says what was awaited."""


def poll_until(check: Callable[[], T], timeout_s: float | None, interval_s: float = 0.5,
               backoff: float = 1.0, max_interval_s: float | None = None,
               what: str | Callable[[], str] = "condition") -> T:
    """Call ``check`` until it returns something other than None or False, and return it
    (so a step number 0 counts as an answer).

    ``timeout_s`` None waits forever. On the deadline raise :class:`PollTimeout` naming
    ``what`` (a string, or a callable that describes the state seen so far).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = interval_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            described = what() if callable(what) else what
            raise PollTimeout(f"{described}: not reached in {timeout_s:g} s")
        pause = delay if deadline is None else min(delay, max(0.0, deadline - now))
        time.sleep(pause)
        delay = delay * backoff
        if max_interval_s is not None:
            delay = min(delay, max_interval_s)


class Backoff:
    """Says when an expensive question (the scheduler's view) may be asked again, while a
    cheap loop (reading a log file) runs often: first at once, then after ``first_s``, growing
    by ``factor`` up to ``max_s`` between questions."""

    def __init__(self, first_s: float = 1.0, factor: float = 2.0, max_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic):
        self.first_s, self.factor, self.max_s, self.clock = first_s, factor, max_s, clock
        self._next_at = clock()
        self._interval = first_s

    def due(self) -> bool:
        """True (and the next question scheduled) if it is time to ask again."""
        now = self.clock()
        if now < self._next_at:
            return False
        self._next_at = now + self._interval
        self._interval = min(self._interval * self.factor, self.max_s)
        return True
