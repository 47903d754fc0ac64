"""What ``scontrol`` and ``sacctmgr`` print, as data: pure parsers over their text, no commands run.

:func:`parse_records` splits ``scontrol show`` output (either layout) into records;
:func:`parse_config`, :func:`parse_nodes`, :func:`parse_partitions`, :func:`parse_topology`,
:func:`parse_qos` and :func:`parse_assoc` turn each command's output into the types below.
A value Slurm prints but hpcorch cannot read (a hostlist, a time limit) raises
:class:`~hpcorch.cluster.slurm.SlurmError`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from hpcorch.cluster.slurm import SlurmError
from hpcorch.spec.units import expand_hostlist, format_time, parse_time

NULLS = {"", "(null)", "N/A", "n/a", "n/s", "NONE", "None"}

# Keys whose values Slurm prints as free text with spaces (``OS=Linux 6.1.0 #1 SMP ...``,
# ``Reason=Not responding [slurm@...]``). Every other value is one token. A Slurm key is
# CamelCase (``MCS_label`` included), so a token opens a new key only if it starts with a capital
# letter and has '=': ``Reason=bad gpu=3`` keeps ``gpu=3`` in the reason.
_KEY_TOKEN = re.compile(r"([A-Z][A-Za-z0-9_]*)=(.*)\Z", re.S)


# ---------------------------------------------------------------------------------------------
# Parsers: text -> data
# ---------------------------------------------------------------------------------------------

def parse_records(text: str, first_key: str) -> list[dict[str, str]]:
    """``scontrol show`` output as one dict per record, in either layout: ``-o`` (one line a
    record) or the default (a record over several indented lines, blank lines between).

    A record starts at each ``first_key=`` token (``NodeName``, ``PartitionName``,
    ``SwitchName``). Values with spaces (``OS=``, ``Reason=``, a reason's continuation lines)
    are joined with single spaces. Text before the first record (a header) is ignored.
    """
    records: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    key = None
    for token in text.split():
        m = _KEY_TOKEN.match(token)
        if m and m[1] == first_key:
            current, key = {first_key: m[2]}, first_key
            records.append(current)
        elif current is None:
            continue
        elif m:
            key = m[1]
            current[key] = m[2]
        else:  # a word of a free-text value such as OS= or Reason=
            current[key] = f"{current[key]} {token}" if current[key] else token
    return records


def value(record: dict[str, str], *keys: str) -> str | None:
    """The first of ``keys`` that the record has with a real value (``(null)``, ``N/A``, ""
    are no value)."""
    for key in keys:
        text = record.get(key)
        if text is not None and text.strip() not in NULLS:
            return text.strip()
    return None


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Key = value`` lines (section headers and the
    ``Configuration data as of ...`` line have no ``=`` and are skipped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z][A-Za-z0-9_]*)\s*=\s?(.*)$", line.strip())
        if m:
            out.setdefault(m[1], m[2].strip())
    return out


@dataclass(frozen=True)
class Gres:
    name: str          # gpu, nic, mps, shard, ...
    type: str | None   # a40, 1g.10gb, ... (None: untyped)
    count: int


_COUNT_RE = re.compile(r"^(\d+)([KMG]?)$")
_COUNT_FACTOR = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses: ``gpu:a40:4(S:0,1),nic:1`` is two items."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_gres(text: str | None) -> list[Gres]:
    """A node's ``Gres=``: ``gpu:a40:4(S:0-1)``, ``gpu:4``, ``gpu:1g.10gb:7,gpu:2g.20gb:2``,
    ``gpu:a100:no_consume:4``, ``mps:200``, ``(null)``. A name without a count counts 1."""
    if text is None or text.strip() in NULLS:
        return []
    out = []
    for item in _split_top(text):
        spec = item.split("(", 1)[0]  # (S:0-1): the sockets the devices sit on
        parts = [p for p in spec.split(":") if p and p != "no_consume"]
        if not parts:
            continue
        name, rest = parts[0], parts[1:]
        m = _COUNT_RE.match(rest[-1]) if rest else None
        if m:
            count, rest = int(m[1]) * _COUNT_FACTOR[m[2]], rest[:-1]
        else:
            count = 1
        out.append(Gres(name, ":".join(rest) or None, count))
    return out


def _int(record: dict[str, str], *keys: str, default: int | None = None) -> int | None:
    text = value(record, *keys)
    if text is None:
        return default
    m = re.match(r"^(\d+)", text)
    return int(m[1]) if m else default


def _names(text: str | None) -> list[str]:
    return [] if text is None else [t for t in (s.strip() for s in text.split(",")) if t and t not in NULLS]


@dataclass(frozen=True)
class Shape:
    """What makes two nodes the same node type: the fields a profile's node type describes
    and Slurm reports. ``arch`` None: not reported (a node that never registered)."""

    cpus: int
    memory_mb: int
    gpu_count: int
    gpu_type: str | None
    features: tuple[str, ...]
    threads_per_core: int = 1
    arch: str | None = None


@dataclass
class Node:
    name: str
    shape: Shape
    partitions: list[str] = field(default_factory=list)
    state: str = ""
    other_gpus: list[Gres] = field(default_factory=list)  # GPU GRES of other types (MIG mixes)


def node_from_record(rec: dict[str, str]) -> Node:
    """One ``scontrol show node`` record as a :class:`Node`. CPUs: ``CPUTot`` (every logical
    CPU, as a profile counts them); features: ``AvailableFeatures`` (``Features`` before 15.08)."""
    gpus = [g for g in parse_gres(value(rec, "Gres")) if g.name == "gpu"]
    by_type: Counter = Counter()
    for g in gpus:
        by_type[g.type] += g.count
    # One node type holds one GPU kind: the most numerous (first listed on a tie) stands for the
    # node; the others are kept so that the draft can say what it left out.
    main = max(by_type, key=lambda t: by_type[t]) if by_type else None
    shape = Shape(
        cpus=_int(rec, "CPUTot", "CPUs", default=1),
        memory_mb=_int(rec, "RealMemory", default=1),
        gpu_count=by_type.get(main, 0) if by_type else 0,
        gpu_type=main,
        features=tuple(sorted(set(_names(value(rec, "AvailableFeatures", "Features"))))),
        threads_per_core=_int(rec, "ThreadsPerCore", default=1),
        arch=value(rec, "Arch"),
    )
    others = [Gres("gpu", t, n) for t, n in by_type.items() if t != main]
    return Node(rec["NodeName"], shape, _names(value(rec, "Partitions")), value(rec, "State") or "", others)


def parse_nodes(text: str) -> list[Node]:
    """``scontrol -o show node`` (or the multi-line layout) as nodes, in Slurm's order."""
    return [node_from_record(rec) for rec in parse_records(text, "NodeName") if value(rec, "NodeName")]


@dataclass
class SlurmPartition:
    name: str
    nodes: str | None            # Slurm's hostlist; None: a partition without nodes
    max_time: str = "UNLIMITED"
    default: bool = False
    priority_tier: int = 1
    allow_qos: list[str] | None = None  # None: ALL
    qos: str | None = None              # the partition QOS (its limits), not one a job names
    state: str = "UP"


def parse_partitions(text: str) -> list[SlurmPartition]:
    """``scontrol -o show partition``."""
    out = []
    for rec in parse_records(text, "PartitionName"):
        allow = value(rec, "AllowQos")
        out.append(SlurmPartition(
            name=rec["PartitionName"],
            nodes=value(rec, "Nodes"),
            max_time=value(rec, "MaxTime") or "UNLIMITED",
            default=(value(rec, "Default") or "NO").upper() == "YES",
            priority_tier=_int(rec, "PriorityTier", default=1),
            allow_qos=None if allow is None or allow.upper() == "ALL" else _names(allow),
            qos=value(rec, "QoS", "QOS"),
            state=value(rec, "State") or "UP",
        ))
    return out


@dataclass
class Switch:
    name: str
    level: int
    nodes: list[str]       # every node under it (Slurm prints the union for upper levels)
    switches: list[str]    # its child switches (empty for a leaf)


@dataclass
class Block:
    """A block of Slurm >= 23.11's topology/block (``BlockName=b1 BlockIndex=0 Nodes=...``)."""

    name: str
    index: int
    nodes: list[str]


@dataclass
class Topology:
    switches: list[Switch] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)


def expand_hosts(expr: str | None, what: str) -> list[str]:
    """A Slurm hostlist expanded (none: []); one hpcorch cannot read raises :class:`SlurmError` naming ``what``."""
    if expr is None or expr.strip() in NULLS:
        return []
    try:
        return expand_hostlist(expr)
    except ValueError as exc:
        raise SlurmError(f"{what}: {exc}") from None


def parse_topology(text: str) -> Topology:
    """``scontrol show topology``: tree switches (``SwitchName=s2 Level=1 LinkSpeed=1
    Nodes=tux[0-7] Switches=s[0-1]``) and blocks (``BlockName=b1 BlockIndex=0 Nodes=...``).
    "No topology information available" and the like give an empty topology."""
    topo = Topology()
    for rec in parse_records(text, "SwitchName"):
        name = rec["SwitchName"]
        topo.switches.append(Switch(name, _int(rec, "Level", default=0),
                                    expand_hosts(value(rec, "Nodes"), f"switch {name} Nodes="),
                                    expand_hosts(value(rec, "Switches"), f"switch {name} Switches=")))
    for rec in parse_records(text, "BlockName"):
        name = rec["BlockName"]
        topo.blocks.append(Block(name, _int(rec, "BlockIndex", default=len(topo.blocks)),
                                 expand_hosts(value(rec, "Nodes"), f"block {name} Nodes=")))
    return topo


def profile_time(text: str | None) -> str:
    """Slurm's time limit in the profile's canonical form (``UNLIMITED`` when there is none)."""
    try:
        return format_time(parse_time(text) if text else None)
    except ValueError as exc:
        raise SlurmError(f"Slurm reported a time limit hpcorch cannot read: {exc}") from None


# sacctmgr's QOS columns, in the order asked for (``format=``): parse_qos reads them by position.
QOS_FORMAT = ("Name", "Priority", "MaxWall", "MaxTRES", "MaxTRESPerNode", "MaxTRESPU", "MaxJobsPU")
ASSOC_FORMAT = ("Account", "Partition", "QOS")


def tres_counts(text: str) -> dict[str, int]:
    """``cpu=64,gres/gpu=8,node=2`` -> {"cpu": 64, "gres/gpu": 8, "node": 2} (typed GPU limits
    ``gres/gpu:a100=4`` keep their type in the key)."""
    out = {}
    for item in _names(text):
        key, _, num = item.partition("=")
        if num.isdigit():
            out[key] = int(num)
    return out


@dataclass
class Qos:
    name: str
    priority: int = 0
    max_time: str | None = None
    max_nodes: int | None = None
    max_gpus: int | None = None
    max_gpus_per_node: int | None = None


def parse_qos(text: str) -> list[Qos]:
    """``sacctmgr -nP show qos format=`` + :data:`QOS_FORMAT` (``|``-separated, no header)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = dict(zip(QOS_FORMAT, (line.split("|") + [""] * len(QOS_FORMAT)), strict=False))  # padded
        per_job, per_node = tres_counts(cols["MaxTRES"]), tres_counts(cols["MaxTRESPerNode"])
        wall = cols["MaxWall"].strip()
        wall = profile_time(wall) if wall else None
        out.append(Qos(
            name=cols["Name"].strip(),
            priority=int(cols["Priority"]) if cols["Priority"].strip().isdigit() else 0,
            max_time=wall or None,
            max_nodes=per_job.get("node"),
            max_gpus=per_job.get("gres/gpu"),
            max_gpus_per_node=per_node.get("gres/gpu"),
        ))
    return out


@dataclass
class Assoc:
    account: str
    partition: str | None
    qos: list[str]


def parse_assoc(text: str) -> list[Assoc]:
    """``sacctmgr -nP show assoc where user=U format=Account,Partition,QOS``."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        account, partition, qos = (line.split("|") + ["", ""])[:3]
        out.append(Assoc(account.strip(), partition.strip() or None, _names(qos)))
    return out
