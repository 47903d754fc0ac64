"""A draft profile, plain data plus the comments that go with it (:class:`Draft`), and
:func:`render_draft`, which writes it as YAML with those comments (the FILL IN notes of
``hpcorch profile discover``). Reading the YAML back gives the draft's data.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Draft:
    """A profile as plain data (the design's keys) and the comments that go with it:
    ``notes[path]`` are comment lines for the key at the dotted ``path`` ("" for the top).
    A note on a mapping is written at the end of that mapping; on anything else, above it; on a
    key that the data does not have, at the end of its parent."""

    data: dict
    notes: dict[str, list[str]] = field(default_factory=dict)

    def note(self, path: str, *lines: str) -> None:
        self.notes.setdefault(path, []).extend(lines)


_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_.+/-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"}


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    text = str(v)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _flow(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def _is_simple(v: Any) -> bool:
    """Written on one line: scalars, lists of scalars, mappings of those."""
    if isinstance(v, dict):
        return all(not isinstance(x, (dict, list)) or (isinstance(x, list) and all(
            not isinstance(y, (dict, list)) for y in x)) for x in v.values())
    if isinstance(v, list):
        return all(not isinstance(x, (dict, list)) for x in v)
    return True


def _comments(lines: list[str], indent: int) -> list[str]:
    return [f"{' ' * indent}# {line}".rstrip() for line in lines]


def render_draft(draft: Draft) -> str:
    """The draft as YAML text with its notes as comments. Reading it back gives ``draft.data``."""
    out = _comments(draft.notes.get("", []), 0)
    _mapping(draft.data, "", 0, draft.notes, out)
    return "\n".join(out) + "\n"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _mapping(data: dict, path: str, indent: int, notes: dict, out: list[str]) -> None:
    pad = " " * indent
    for key, v in data.items():
        child = _join(path, key)
        if isinstance(v, dict) and v:
            out.append(f"{pad}{_scalar(key)}:")
            _mapping(v, child, indent + 2, notes, out)
            out.extend(_comments(notes.get(child, []), indent + 2))
        elif isinstance(v, list) and v and not _is_simple(v):
            out.extend(_comments(notes.get(child, []), indent))
            out.append(f"{pad}{_scalar(key)}:")
            _sequence(v, child, indent + 2, notes, out)
        else:
            out.extend(_comments(notes.get(child, []), indent))
            out.append(f"{pad}{_scalar(key)}: {_flow(v)}")
    # Notes on keys this mapping does not have (a FILL IN for an absent `launch:`) end it.
    prefix = f"{path}." if path else ""
    for note_path, lines in notes.items():
        rest = note_path[len(prefix):] if note_path.startswith(prefix) else None
        if rest and "." not in rest and "[" not in rest and rest not in data:
            out.extend(_comments(lines, indent))


def _sequence(items: list, path: str, indent: int, notes: dict, out: list[str]) -> None:
    pad = " " * indent
    for i, item in enumerate(items):
        child = f"{path}[{i}]"
        if isinstance(item, dict) and (not _is_simple(item) or len(item) > 3):
            sub: list[str] = []
            _mapping(item, child, indent + 2, notes, sub)
            # The item's first key opens it ("- name: ..."); comments above that key go below it.
            first = next(j for j, line in enumerate(sub) if not line.lstrip().startswith("#"))
            out.append(f"{pad}- {sub[first][indent + 2:]}")
            out.extend(sub[:first] + sub[first + 1:])
        elif isinstance(item, dict) and len(item) <= 3:
            out.extend(_comments(notes.get(child, []), indent))
            out.append(f"{pad}- {_flow(item)}")
        else:
            out.append(f"{pad}- {_flow(item)}")
