"""What a profile calls what Slurm reports: a profile name made from free text, whether a
name is one a profile can hold, and the named node types that nodes of one shape make.

``profile discover`` names its draft's node types with :func:`node_types`; ``profile diff``
groups the live nodes the same way, so both sides agree on what a node type is.
"""
from __future__ import annotations

import re
from collections import Counter

from hpcorch.cluster.slurmtext import Node, Shape
from hpcorch.spec.schema import NAME_RE


def safe_name(text: str) -> str:
    """A profile name (letters, digits, ``_.+-``, starting with a letter or digit)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).lstrip("_.+-")[:60]
    return name or "nodes"


def _fill_arch(nodes: list[Node]) -> dict[str, Shape]:
    """Each node's shape, with an unreported Arch (a node that never registered) taken from
    the nodes of the same shape that do report one: a down node should not become a type."""
    known: dict[Shape, Counter] = {}
    for node in nodes:
        if node.shape.arch:
            known.setdefault(_without_arch(node.shape), Counter())[node.shape.arch] += 1
    out = {}
    for node in nodes:
        shape = node.shape
        if not shape.arch and _without_arch(shape) in known:
            shape = Shape(**{**shape.__dict__, "arch": known[_without_arch(shape)].most_common(1)[0][0]})
        out[node.name] = shape
    return out


def _without_arch(shape: Shape) -> Shape:
    return Shape(**{**shape.__dict__, "arch": None})


def node_types(nodes: list[Node]) -> tuple[dict[str, Shape], dict[str, str]]:
    """Group nodes of identical shape into named node types: (type -> shape, node -> type).

    Names come from the GPU GRES type, else the first feature, else ``gpu``/``cpu``; a name
    already taken gets ``-2``, ``-3``, ... Types are in the order their first node appears.
    """
    shapes = _fill_arch(nodes)
    by_shape: dict[Shape, str] = {}
    types: dict[str, Shape] = {}
    type_of: dict[str, str] = {}
    for node in nodes:
        shape = shapes[node.name]
        if shape not in by_shape:
            base = safe_name(shape.gpu_type or (shape.features[0] if shape.features else
                                                 "gpu" if shape.gpu_count else "cpu"))
            name, n = base, 1
            while name in types:
                n += 1
                name = f"{base}-{n}"
            by_shape[shape] = name
            types[name] = shape
        type_of[node.name] = by_shape[shape]
    return types, type_of


def valid_name(text: str) -> bool:
    """Whether ``text`` is a name a profile can hold (a partition, a QOS)."""
    return bool(NAME_RE.fullmatch(text))
