"""Bad-node quarantine: the nodes a profile's jobs stay away from, and why.

A node enters quarantine when it fails a job's pre-flight check or kills a job (its ranks died
first, or Slurm took it down under the job); see :mod:`hpcorch.batch.recovery`. The list lives in the
registry (:meth:`hpcorch.state.registry.Registry.quarantine`), keyed by the profile's name, with an
expiry: later plans of that profile exclude the node until it expires or ``hpcorch nodes
clear`` releases it. hpcorch never drains a node (only an administrator may); quarantine is the
user-level equivalent, and its history names the "lemon" nodes that fail again and again.
"""
from __future__ import annotations

import time
from collections import Counter

from hpcorch.state.registry import Quarantined, Registry

# A node quarantined this often within this window is a lemon: worth telling the site about.
LEMON_TIMES = 2
LEMON_WINDOW_S = 7 * 24 * 3600


def excluded_nodes(profile: str, registry: Registry | None = None) -> dict[str, str]:
    """The nodes ``profile``'s next job must avoid, each with a one-line why (for the plan)."""
    registry = registry or Registry()
    if not registry.path.exists():  # nothing was ever quarantined; a dry run creates no registry
        return {}
    held = registry.quarantined(profile)
    if not held:
        return {}
    from hpcorch.util.display import when  # the table helpers: only once a node is held

    return {q.node: f"{q.reason} (until {when(q.until)})" for q in held}


def lemons(history: list[Quarantined], now: float | None = None) -> set[tuple[str, str]]:
    """(profile, node) pairs quarantined at least :data:`LEMON_TIMES` times in the last week."""
    now = time.time() if now is None else now
    counts = Counter((q.profile, q.node) for q in history if now - q.since <= LEMON_WINDOW_S)
    return {key for key, n in counts.items() if n >= LEMON_TIMES}
