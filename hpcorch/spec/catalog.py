"""Where profiles, jobs and templates are found by name: the user's own folders first, then the
ones shipped inside the package (read through ``importlib.resources``, so an installed wheel
has them as much as a source checkout does).

Search order for a profile named ``NAME``: each folder of ``HPCORCH_PROFILE_PATH`` (separated
by ``:``), then ``$HPCORCH_HOME/profiles``, then the shipped profiles. Jobs: ``$HPCORCH_HOME/jobs``,
then the shipped jobs. ``HPCORCH_PROFILE`` names the default profile.
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

SHIPPED = Path(str(importlib.resources.files("hpcorch")))
TEMPLATES_DIR = SHIPPED / "templates"


def hpcorch_home() -> Path:
    """The user's hpcorch folder: ``$HPCORCH_HOME``, default ``~/.hpcorch``."""
    return Path(os.environ.get("HPCORCH_HOME", Path.home() / ".hpcorch"))


def default_profile() -> str:
    return os.environ.get("HPCORCH_PROFILE") or "local"


def search_path(kind: str) -> list[Path]:
    """The folders searched for ``kind`` ("profiles" or "jobs"), first match wins."""
    extra = os.environ.get("HPCORCH_PROFILE_PATH", "") if kind == "profiles" else ""
    return [Path(p) for p in extra.split(os.pathsep) if p] + [hpcorch_home() / kind, SHIPPED / kind]


def is_name(text: str) -> bool:
    """A bare name (``h100-ndr``), as opposed to a path (``my/cluster.yaml``)."""
    return os.sep not in text and not text.endswith((".yaml", ".yml"))


def lasting(ref: str) -> str:
    """``ref`` (a profile or job as typed) as it means the same from any folder, for a record
    that later commands read elsewhere: a name as it is, a path made absolute."""
    return ref if is_name(ref) else str(Path(ref).expanduser().absolute())


def find(kind: str, name: str) -> Path | None:
    for folder in search_path(kind):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def names(kind: str) -> dict[str, Path]:
    """Every name of ``kind`` that resolves, with the file it resolves to."""
    found: dict[str, Path] = {}
    for folder in search_path(kind):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def unknown(kind: str, name: str) -> str:
    """The message for a name that resolves nowhere: a suggestion, and what exists."""
    known = list(names(kind))
    import difflib  # only for a name that resolves nowhere

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"no such {kind[:-1]} {name!r}; {hint}known: {', '.join(known) or 'none'}"
