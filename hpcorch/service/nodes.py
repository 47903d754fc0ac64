"""Quarantined nodes as a Python API (see :mod:`hpcorch.state.quarantine`): list them, release one."""
from __future__ import annotations

from hpcorch.errors import HpcorchError
from hpcorch.service.profiles import name_of


def quarantined(profile: str | None = None, history: bool = False) -> dict:
    """The nodes in quarantine (``history``: every quarantine recorded, expired and cleared ones
    too) of ``profile`` (a name or a path) or of every profile: ``{"profile": its name or None,
    "nodes": [...]}``, each node the record's fields plus ``active`` and ``lemon`` (quarantined
    twice or more within a week)."""
    from hpcorch.state.quarantine import lemons
    from hpcorch.state.registry import Registry

    registry, name = Registry(), name_of(profile)
    lemon = lemons(registry.quarantined(name, history=True))
    return {"profile": name,
            "nodes": [{**vars(q), "active": q.active(), "lemon": (q.profile, q.node) in lemon}
                      for q in registry.quarantined(name, history=history)]}


def release(node: str, profile: str | None = None) -> str:
    """Release ``node`` from quarantine now (in ``profile`` only, when given); returns the profile
    name it was released for (None: every profile). HpcorchError when it was not quarantined."""
    from hpcorch.state.registry import Registry

    name = name_of(profile)
    if not Registry().release(node, name):
        raise HpcorchError(f"node {node!r} is not in quarantine{f' for profile {name}' if name else ''} "
                           f"(see: hpcorch nodes list)")
    return name
