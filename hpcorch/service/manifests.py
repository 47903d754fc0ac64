"""What ran in each attempt of a job, and its curves, as a Python API: the data behind
``hpcorch manifest`` and ``hpcorch plot``. plotext and matplotlib are imported only when a
plot is drawn."""
from __future__ import annotations

import os
from pathlib import Path


def attempts(ref: str) -> dict:
    """Every attempt's manifest of job ``ref`` (a registry reference or a run directory), in order,
    and the warnings about what changed between attempts: ``{"manifests": [...], "warnings": [...]}``."""
    from hpcorch.observe import manifest

    run = manifest.run_of(ref)
    found = manifest.manifests(run)
    return {"manifests": found, "warnings": manifest.differences(run) if found else []}


def diff(ref: str, a: int, b: int) -> dict:
    """Attempts ``a`` and ``b`` of job ``ref`` side by side: what may change the result
    (``changes``), every other field (``fields``), packages and the code diff (``code``)."""
    from hpcorch.observe import manifest

    return manifest.diff(ref, a, b)


def curves(ref: str):
    """The loss, learning-rate, throughput and goodput curves of job ``ref``, restarts marked
    (:class:`hpcorch.observe.plot.Curves`; ``.as_dict()`` for JSON)."""
    from hpcorch.observe.plot import plot_curves

    return plot_curves(ref)


def png(found, path: str | os.PathLike) -> Path:
    """Draw ``found`` (from :func:`curves`) into a PNG at ``path`` with matplotlib."""
    from hpcorch.observe.plot import png as draw

    return draw(found, path)


def terminal(found, width: int | None = None, height: int | None = None, color: bool = True) -> str:
    """``found`` (from :func:`curves`) drawn as text for a terminal with plotext."""
    from hpcorch.observe.plot import terminal as draw

    return draw(found, width, height, color=color)


def overlay_png(found, path: str | os.PathLike) -> Path:
    """A sweep's points' curves on one PNG (:func:`hpcorch.observe.plot.overlay_png`)."""
    from hpcorch.observe.plot import overlay_png as draw

    return draw(found, path)


def overlay_terminal(found, width: int | None = None, height: int | None = None, color: bool = True) -> str:
    """A sweep's points' curves in the terminal (:func:`hpcorch.observe.plot.overlay_terminal`)."""
    from hpcorch.observe.plot import overlay_terminal as draw

    return draw(found, width, height, color)
