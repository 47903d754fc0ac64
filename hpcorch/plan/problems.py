"""Independent plan errors of one job, gathered so that one run reports all of them.

A check that finds a problem raises the plan's one-line :class:`PlanError`; the planner runs
the checks that do not depend on each other through :meth:`Problems.check`, which keeps the
error and goes on with a fallback value, and :meth:`Problems.raise_any` then raises them
together (:class:`PlanErrors`: one line each). A check whose result the next ones need (the
partition itself) still stops the plan at once.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hpcorch.errors import PlanError, PlanErrors

T = TypeVar("T")


class Problems:
    def __init__(self):
        self.errors: list[PlanError] = []

    def check(self, fn: Callable[..., T], *args, fallback: T | None = None, **kwargs) -> T | None:
        """``fn(*args, **kwargs)``, or ``fallback`` once its PlanError is kept."""
        try:
            return fn(*args, **kwargs)
        except PlanErrors as exc:
            self.errors.extend(exc.errors)
        except PlanError as exc:
            self.errors.append(exc)
        return fallback

    def add(self, error: PlanError) -> None:
        self.errors.append(error)

    def raise_any(self) -> None:
        """Raise the one error, or all of them (in the order found, each once)."""
        unique = list({str(e): e for e in self.errors}.values())
        if len(unique) == 1:
            raise unique[0]
        if unique:
            raise PlanErrors(unique)
