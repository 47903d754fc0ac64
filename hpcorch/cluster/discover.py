"""A cluster profile from a live Slurm cluster (``hpcorch profile discover``) and the drift
between a committed profile and the cluster (``hpcorch profile diff``).

Three layers, each testable alone:

- parsers: pure functions over the text that ``scontrol`` and ``sacctmgr`` print
  (:func:`parse_config`, :func:`parse_nodes`, :func:`parse_partitions`, :func:`parse_topology`,
  :func:`parse_qos`, :func:`parse_assoc`);
- :func:`collect`: runs the commands through a *runner* (any ``runner(*argv) -> stdout`` that
  raises :class:`~hpcorch.cluster.slurm.SlurmError`; ``Slurm(env=...).run`` is one) and parses
  them into a :class:`LiveCluster`;
- :func:`build_profile` (a draft profile as plain data plus the comments that go with it;
  :func:`render_draft` writes it as YAML) and :func:`diff` (one line per drift).

Nothing here imports torch or submitit; the spec layer is used only for hostlists and times.
"""
from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from ..spec.schema import NAME_RE
from ..spec.units import compress_hostlist, expand_hostlist, format_time, parse_time
from .slurm import SlurmError

Runner = Callable[..., str]  # runner("scontrol", "-o", "show", "node") -> stdout, or SlurmError

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


def _hosts(expr: str | None, what: str) -> list[str]:
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
                                    _hosts(value(rec, "Nodes"), f"switch {name} Nodes="),
                                    _hosts(value(rec, "Switches"), f"switch {name} Switches=")))
    for rec in parse_records(text, "BlockName"):
        name = rec["BlockName"]
        topo.blocks.append(Block(name, _int(rec, "BlockIndex", default=len(topo.blocks)),
                                 _hosts(value(rec, "Nodes"), f"block {name} Nodes=")))
    return topo


# sacctmgr's QOS columns, in the order asked for (``format=``): parse_qos reads them by position.
QOS_FORMAT = ("Name", "Priority", "MaxWall", "MaxTRES", "MaxTRESPerNode", "MaxTRESPU", "MaxJobsPU")
ASSOC_FORMAT = ("Account", "Partition", "QOS")


def _tres(text: str) -> dict[str, int]:
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
        cols = dict(zip(QOS_FORMAT, (line.split("|") + [""] * len(QOS_FORMAT))))
        per_job, per_node = _tres(cols["MaxTRES"]), _tres(cols["MaxTRESPerNode"])
        wall = cols["MaxWall"].strip()
        wall = _profile_time(wall) if wall else None
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


# ---------------------------------------------------------------------------------------------
# Collecting: commands -> LiveCluster
# ---------------------------------------------------------------------------------------------

@dataclass
class LiveCluster:
    """Everything discover and diff need, as Slurm reported it."""

    config: dict[str, str]
    nodes: list[Node]
    partitions: list[SlurmPartition]
    topology: Topology = field(default_factory=Topology)
    qos: list[Qos] | None = None        # None: not available (reason in qos_missing)
    qos_missing: str | None = None
    assoc: list[Assoc] | None = None
    assoc_missing: str | None = None
    user: str | None = None

    @property
    def version(self) -> str:
        return self.config.get("SLURM_VERSION", "unknown")

    @property
    def topology_plugin(self) -> str:
        return self.config.get("TopologyPlugin", "") or ""


def subprocess_runner(env: dict | None = None, timeout_s: float = 60.0) -> Runner:
    """A runner for :func:`collect`: runs the command with ``env`` added to this process's
    environment (``{"SLURM_CONF": ...}`` picks a cluster), stops it after ``timeout_s`` and
    raises :class:`SlurmError` as one line when it is missing, hangs or fails."""

    def run(*args: str) -> str:
        command = " ".join(args)
        try:
            proc = subprocess.run(list(args), env={**os.environ, **(env or {})}, capture_output=True,
                                  text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SlurmError(f"{args[0]}: not found; run this on a login node with Slurm's "
                             "commands on PATH") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{command}: no answer in {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip() or "no message").splitlines()[0]
            raise SlurmError(f"{command} failed (exit {proc.returncode}): {message}")
        return proc.stdout

    return run


# Topology plugins whose `scontrol show topology` lists something a profile can use or note.
_TOPOLOGY_PLUGINS = ("topology/tree", "topology/block")


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0]


def collect(runner: Runner, user: str | None = None) -> LiveCluster:
    """Ask the cluster: config, nodes, partitions (errors raise :class:`SlurmError`), the
    topology when a tree or block plugin is configured, and, where accounting allows, QOS and
    ``user``'s associations (failures there are recorded in ``*_missing``, not raised: many
    sites hide accounting from users)."""
    config = parse_config(runner("scontrol", "show", "config"))
    nodes = parse_nodes(runner("scontrol", "-o", "show", "node"))
    partitions = parse_partitions(runner("scontrol", "-o", "show", "partition"))
    live = LiveCluster(config, nodes, partitions)
    plugin = live.topology_plugin
    if any(plugin.startswith(p) for p in _TOPOLOGY_PLUGINS):
        live.topology = parse_topology(runner("scontrol", "show", "topology"))
    storage = config.get("AccountingStorageType", "")
    if not storage or storage.endswith("/none"):
        live.qos_missing = live.assoc_missing = (f"accounting is off (AccountingStorageType="
                                                 f"{storage or '(null)'})")
        return live
    try:
        live.qos = parse_qos(runner("sacctmgr", "-nP", "show", "qos", f"format={','.join(QOS_FORMAT)}"))
    except SlurmError as exc:
        live.qos_missing = _first_line(exc)
    live.user = user or os.environ.get("USER") or getpass.getuser()
    try:
        live.assoc = parse_assoc(runner("sacctmgr", "-nP", "show", "assoc", "where", f"user={live.user}",
                                        f"format={','.join(ASSOC_FORMAT)}"))
    except SlurmError as exc:
        live.assoc_missing = _first_line(exc)
    return live


# ---------------------------------------------------------------------------------------------
# Building the draft profile
# ---------------------------------------------------------------------------------------------

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


_MIG_RE = re.compile(r"^\d+g\.\d+gb$")


def _safe_name(text: str) -> str:
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
            base = _safe_name(shape.gpu_type or (shape.features[0] if shape.features else
                                                  "gpu" if shape.gpu_count else "cpu"))
            name, n = base, 1
            while name in types:
                n += 1
                name = f"{base}-{n}"
            by_shape[shape] = name
            types[name] = shape
        type_of[node.name] = by_shape[shape]
    return types, type_of


def _node_type_data(shape: Shape) -> dict:
    data: dict[str, Any] = {"cpus": shape.cpus, "memory_mb": shape.memory_mb}
    if shape.arch:
        data["arch"] = shape.arch
    data["threads_per_core"] = shape.threads_per_core
    if shape.gpu_count:
        gpus: dict[str, Any] = {"count": shape.gpu_count}
        if shape.gpu_type:
            gpus["type"] = shape.gpu_type
            if _MIG_RE.match(shape.gpu_type):
                gpus["mig"] = shape.gpu_type
        data["gpus"] = gpus
    if shape.features:
        data["features"] = list(shape.features)
    return data


def _switch_tree(live: LiveCluster, known_hosts: set[str], draft: Draft) -> dict | None:
    """The profile's ``network.switches`` from Slurm's tree: leaves (switches without child
    switches) keep the nodes of this profile's partitions; spines keep their child switches.
    Switches left empty are dropped (a profile refuses them), with a note."""
    leaves, spines, dropped = [], [], []
    for sw in live.topology.switches:
        if sw.switches:
            continue
        hosts = [h for h in sw.nodes if h in known_hosts]
        if hosts:
            leaves.append({"name": sw.name, "nodes": compress_hostlist(hosts)})
        else:
            dropped.append(sw.name)
    kept = {leaf["name"] for leaf in leaves}
    # Spines in order from the lowest level up, so a spine's kept children are known.
    for sw in sorted((s for s in live.topology.switches if s.switches), key=lambda s: s.level):
        children = [c for c in sw.switches if c in kept]
        if children:
            spines.append({"name": sw.name, "switches": children})
            kept.add(sw.name)
        else:
            dropped.append(sw.name)
    spines.sort(key=lambda s: [x.name for x in live.topology.switches].index(s["name"]))
    if dropped:
        draft.note("network.switches", f"Left out: switches {', '.join(dropped)} (no nodes of "
                                       "these partitions under them).")
    if not leaves:
        return None
    listed = {c for spine in spines for c in spine["switches"]}
    roots = [n for n in kept if n not in listed]
    if spines and len(roots) > 1:
        draft.note("network", f"Left out: Slurm's switch tree has {len(roots)} roots "
                              f"({', '.join(sorted(roots))}); a profile's tree has one root spine. "
                              "Describe the separate fabrics as separate profiles or partitions.")
        return None
    return {"leaves": leaves, **({"spines": spines} if spines else {})}


def _qos_data(qos: Qos) -> dict:
    data: dict[str, Any] = {}
    if qos.max_time:
        data["max_time"] = qos.max_time
    for key in ("max_nodes", "max_gpus", "max_gpus_per_node"):
        if getattr(qos, key) is not None:
            data[key] = getattr(qos, key)
    return data


def _valid_name(text: str) -> bool:
    return bool(NAME_RE.fullmatch(text))


def build_profile(live: LiveCluster, name: str | None = None) -> Draft:
    """The draft profile for ``live``: node types, partitions (``node_groups`` when a partition
    spans several types), the switch tree, QOS and the user's only account where accounting
    answered; comments say what the user must fill in and what Slurm reported that a profile
    cannot hold."""
    name = _safe_name(name or live.config.get("ClusterName") or "cluster")
    draft = Draft({"name": name, "scheduler": "slurm",
                   "description": f"Discovered from Slurm cluster "
                                  f"{live.config.get('ClusterName', name)} (Slurm {live.version})"})
    draft.note("", "Draft written by `hpcorch profile discover` from the live cluster. Slurm reported",
               "the nodes, GPU counts and types, features, partitions, switch tree and QOS below;",
               "the lines marked FILL IN are what Slurm cannot know. Check them, then",
               "`hpcorch profile validate FILE` and `hpcorch profile diff FILE` later for drift.")
    draft.note("login", "FILL IN (optional): the login node, for submitting from elsewhere over SSH:",
               "login: {host: login.example.org, user: me}")

    node_names = {n.name for n in live.nodes}
    in_partitions: set[str] = set()
    partitions_hosts: list[tuple[SlurmPartition, list[str]]] = []
    for part in live.partitions:
        hosts = _partition_hosts(part, live)
        unknown = [h for h in hosts if h not in node_names]
        hosts = [h for h in hosts if h in node_names]
        if unknown:
            draft.note("partitions", f"Partition {part.name}: Slurm lists {compress_hostlist(unknown)}, "
                                     "which scontrol shows no node for; left out.")
        if not hosts or not _valid_name(part.name):
            draft.note("partitions", f"Left out: partition {part.name!r} "
                                     f"({'no nodes' if not hosts else 'a name a profile cannot hold'}).")
            continue
        partitions_hosts.append((part, hosts))
        in_partitions.update(hosts)
    if not partitions_hosts:
        raise SlurmError("the cluster reports no partition with nodes; a profile needs at least one")

    nodes = [n for n in live.nodes if n.name in in_partitions]
    outside = [n.name for n in live.nodes if n.name not in in_partitions]
    types, type_of = node_types(nodes)

    draft.data["node_types"] = {}
    for type_name, shape in types.items():
        members = [n for n in nodes if type_of[n.name] == type_name]
        draft.data["node_types"][type_name] = _node_type_data(shape)
        path = f"node_types.{type_name}"
        draft.note(path + ".cpus", f"{len(members)} node(s): {compress_hostlist([n.name for n in members])}")
        if shape.gpu_count:
            draft.note(path + ".gpus",
                       "FILL IN: what Slurm cannot report about these GPUs, e.g.",
                       "model: A100  # GPU model name",
                       "memory_gb: 80",
                       "interconnect: nvlink  # nvlink | xgmi | pcie | none",
                       "peak_tflops: 312.0  # dense bf16 TFLOP/s per GPU, the denominator of MFU",
                       "vendor: nvidia  # nvidia | amd")
            others = sorted({f"gpu:{g.type or ''}:{g.count}".replace("::", ":")
                             for n in members for g in n.other_gpus})
            if others:
                draft.note(path + ".gpus", f"These nodes also offer {', '.join(others)}: a node type holds one "
                                           "GPU kind, so only the most numerous is described.")
    if outside:
        draft.note("node_types", f"Left out: {compress_hostlist(outside)} (in no partition).")

    draft.data["partitions"] = []
    for part, hosts in partitions_hosts:
        entry: dict[str, Any] = {"name": part.name}
        groups: dict[str, list[str]] = {}
        for host in hosts:
            groups.setdefault(type_of[host], []).append(host)
        if len(groups) == 1:
            (type_name, members), = groups.items()
            entry["nodes"] = compress_hostlist(members)
            entry["node_type"] = type_name
        else:
            entry["node_groups"] = [{"nodes": compress_hostlist(m), "node_type": t} for t, m in groups.items()]
        entry["max_time"] = _profile_time(part.max_time)
        entry["default"] = part.default
        entry["priority_tier"] = max(1, part.priority_tier)
        i = len(draft.data["partitions"])
        if part.priority_tier < 1:
            draft.note(f"partitions[{i}].priority_tier",
                       f"Slurm's PriorityTier={part.priority_tier}; a profile's tiers start at 1.")
        if part.allow_qos:
            known = {q.name for q in live.qos or []}
            if live.qos is not None and all(q in known for q in part.allow_qos):
                entry["qos"] = list(part.allow_qos)
            else:
                draft.note(f"partitions[{i}].qos", f"Slurm allows QOS {', '.join(part.allow_qos)} here "
                                                   "(sacctmgr did not describe them).")
        if part.qos:
            draft.note(f"partitions[{i}].name", f"Partition QOS {part.qos} sets this partition's limits.")
        draft.data["partitions"].append(entry)

    _add_qos(live, draft)

    network: dict[str, Any] = {}
    tree = _switch_tree(live, in_partitions, draft)
    if tree:
        network["switches"] = tree
    if live.topology.blocks:
        draft.note("network", f"Slurm reports a block topology ({live.topology_plugin}): "
                              f"{len(live.topology.blocks)} blocks; profiles have no block topology yet,",
                   "so it is left out:",
                   *(f"  BlockName={b.name} Nodes={compress_hostlist(b.nodes)}" for b in live.topology.blocks[:20]),
                   *([f"  ... and {len(live.topology.blocks) - 20} more"] if len(live.topology.blocks) > 20 else []))
    # Written inside `network:` when there is one, else as a whole commented-out block.
    pad, head = ("", []) if network else ("  ", ["network:"])
    draft.note("network", "FILL IN: the fabric and its adapters, e.g.", *head,
               f"{pad}fabric: infiniband  # infiniband | roce | slingshot | efa | omnipath | ethernet",
               f"{pad}infiniband: {{hcas: [mlx5_0, mlx5_1], ports: 1, link_rate_gbps: 200, rails_per_node: 2}}")
    if network:
        draft.data["network"] = network
    draft.note("environment", "FILL IN: what every job needs loaded, e.g.",
               "environment:", "  modules: [cuda/12.4, nccl/2.21]", "  variables: {OMP_NUM_THREADS: 1}")
    draft.note("launch", "FILL IN: the Python that runs the ranks on compute nodes, e.g.",
               "launch: {python: /sw/venvs/torch/bin/python}")

    defaults: dict[str, Any] = {}
    if live.assoc is not None:
        accounts = sorted({a.account for a in live.assoc if a.account})
        if len(accounts) == 1:
            defaults["account"] = accounts[0]
            draft.note("defaults.account", f"The only account of {live.user}'s associations.")
        elif accounts:
            draft.note("defaults", f"FILL IN: account: one of {', '.join(accounts)} "
                                   f"({live.user}'s associations)")
    else:
        draft.note("defaults", f"Accounts left out: sacctmgr show assoc: {live.assoc_missing}")
    draft.note("defaults", "FILL IN: run_root: /scratch/$USER/runs  # where run directories go")
    if defaults:
        draft.data["defaults"] = defaults
    return draft


def _profile_time(text: str | None) -> str:
    """Slurm's time limit in the profile's canonical form (``UNLIMITED`` when there is none)."""
    try:
        return format_time(parse_time(text) if text else None)
    except ValueError as exc:
        raise SlurmError(f"Slurm reported a time limit hpcorch cannot read: {exc}") from None


def _partition_hosts(part: SlurmPartition, live: LiveCluster) -> list[str]:
    """A partition's hosts; ``Nodes=ALL`` is every node scontrol shows."""
    if part.nodes is not None and part.nodes.upper() == "ALL":
        return [n.name for n in live.nodes]
    return _hosts(part.nodes, f"partition {part.name} Nodes=")


def _add_qos(live: LiveCluster, draft: Draft) -> None:
    if live.qos is None:
        draft.note("qos", f"QOS left out: sacctmgr show qos: {live.qos_missing}")
        return
    allowed: dict[str, set[str]] = {}  # qos -> the user's accounts that may use it
    for assoc in live.assoc or []:
        for q in assoc.qos:
            allowed.setdefault(q, set()).add(assoc.account)
    all_accounts = {a.account for a in live.assoc or []}
    qos_map: dict[str, dict] = {}
    for q in live.qos:
        if not _valid_name(q.name):
            draft.note("qos", f"Left out: QOS {q.name!r} (a name a profile cannot hold).")
            continue
        data = _qos_data(q)
        accounts = allowed.get(q.name, set())
        # Only a real restriction is written: QOS every account of the user may use need none.
        if accounts and accounts != all_accounts:
            data["accounts"] = sorted(accounts)
        qos_map[q.name] = data
    if qos_map:
        draft.data["qos"] = qos_map


# ---------------------------------------------------------------------------------------------
# Writing YAML with comments
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Drift: a profile (plain data) against the live cluster
# ---------------------------------------------------------------------------------------------

@dataclass
class View:
    """What diff compares, from either side: host -> (node type, shape); partition ->
    (hosts, max_time seconds, default, priority_tier); switch -> nodes or children."""

    hosts: dict[str, tuple[str, Shape]]
    partitions: dict[str, tuple[frozenset, int | None, bool, int]]
    leaves: dict[str, frozenset]
    spines: dict[str, frozenset]


def profile_view(data: dict) -> View:
    """A profile's plain data (parsed YAML, or ``to_dict`` of a loaded profile) as a :class:`View`.
    Keys the profile leaves out take the loader's defaults; ``arch`` None, ``gpus.type`` None
    (untyped GRES), ``threads_per_core`` 1."""
    types: dict[str, Shape] = {}
    for name, nt in (data.get("node_types") or {}).items():
        gpus = nt.get("gpus") or {}
        count = gpus.get("count", 0) or 0
        types[name] = Shape(cpus=nt.get("cpus"), memory_mb=nt.get("memory_mb"), gpu_count=count,
                            gpu_type=gpus.get("type") if count else None,
                            features=tuple(sorted(set(nt.get("features") or []))),
                            threads_per_core=nt.get("threads_per_core") or 1,
                            arch=nt.get("arch") or "x86_64")
    hosts: dict[str, tuple[str, Shape]] = {}
    partitions = {}
    for part in data.get("partitions") or []:
        groups = part.get("node_groups") or [{"nodes": part.get("nodes"), "node_type": part.get("node_type")}]
        members: list[str] = []
        for group in groups:
            for host in expand_hostlist(group["nodes"]) if group.get("nodes") else []:
                members.append(host)
                if group["node_type"] in types:
                    hosts.setdefault(host, (group["node_type"], types[group["node_type"]]))
        partitions[part["name"]] = (frozenset(members), parse_time(part.get("max_time", "UNLIMITED")),
                                    bool(part.get("default", False)), int(part.get("priority_tier", 1)))
    switches = (data.get("network") or {}).get("switches") or {}
    leaves = {leaf["name"]: frozenset(expand_hostlist(leaf["nodes"])) for leaf in switches.get("leaves") or []}
    spines = {s["name"]: frozenset(s.get("switches") or []) for s in switches.get("spines") or []}
    return View(hosts, partitions, leaves, spines)


def live_view(live: LiveCluster) -> View:
    """The live cluster as a :class:`View` (node types named as discover would name them).
    Nodes in no partition are left out, as a profile cannot hold them."""
    node_names = {n.name for n in live.nodes}
    partitions = {}
    in_partitions: set[str] = set()
    for part in live.partitions:
        hosts = [h for h in _partition_hosts(part, live) if h in node_names]
        if not hosts or not _valid_name(part.name):
            continue  # a profile cannot hold it (discover leaves it out too)
        in_partitions.update(hosts)
        partitions[part.name] = (frozenset(hosts), parse_time(_profile_time(part.max_time)), part.default,
                                 max(1, part.priority_tier))
    nodes = [n for n in live.nodes if n.name in in_partitions]
    types, type_of = node_types(nodes)
    hosts = {n.name: (type_of[n.name], types[type_of[n.name]]) for n in nodes}
    # A live Shape with arch None (a node that never registered) compares no arch.
    for n in nodes:
        if n.shape.arch is None:
            hosts[n.name] = (type_of[n.name], Shape(**{**types[type_of[n.name]].__dict__, "arch": None}))
    leaves = {s.name: frozenset(s.nodes) for s in live.topology.switches if not s.switches}
    spines = {s.name: frozenset(s.switches) for s in live.topology.switches if s.switches}
    return View(hosts, partitions, leaves, spines)


_FIELDS = (("cpus", "cpus"), ("memory_mb", "memory_mb"), ("gpus.count", "gpu_count"),
           ("gpus.type", "gpu_type"), ("features", "features"), ("threads_per_core", "threads_per_core"),
           ("arch", "arch"))


def _show(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, (tuple, frozenset, set, list)):
        return "[" + ", ".join(sorted(v)) + "]"
    return str(v)


def _hostlist(hosts) -> str:
    return compress_hostlist(list(hosts)) if hosts else "(none)"


def diff(profile: dict, live: LiveCluster) -> list[str]:
    """One line per way the profile (plain data) and the live cluster disagree; empty when
    they agree. Fields Slurm cannot report (GPU model, memory, peak TFLOP/s, fabric, ...) are
    never drift; neither is a node type's name."""
    want, have = profile_view(profile), live_view(live)
    lines = []
    gone = [h for h in want.hosts if h not in have.hosts]
    new = [h for h in have.hosts if h not in want.hosts]
    if gone:
        lines.append(f"nodes {_hostlist(gone)}: in the profile, not on the cluster")
    if new:
        lines.append(f"nodes {_hostlist(new)}: on the cluster, not in the profile")
    # Per field, hosts with the same (profile value, cluster value) share one line.
    drift: dict[tuple, list[str]] = {}
    for host, (type_name, shape) in want.hosts.items():
        if host not in have.hosts:
            continue
        live_shape = have.hosts[host][1]
        for label, attr in _FIELDS:
            mine, theirs = getattr(shape, attr), getattr(live_shape, attr)
            if attr == "arch" and theirs is None:
                continue  # not reported by a node that never registered
            if mine != theirs:
                drift.setdefault((type_name, label, mine, theirs), []).append(host)
    for (type_name, label, mine, theirs), hosts in drift.items():
        lines.append(f"nodes {_hostlist(hosts)} (node type {type_name}): {label} {_show(mine)} in the profile, "
                     f"{_show(theirs)} on the cluster")
    for name in want.partitions:
        if name not in have.partitions:
            lines.append(f"partition {name}: in the profile, not on the cluster")
    for name in have.partitions:
        if name not in want.partitions:
            lines.append(f"partition {name}: on the cluster, not in the profile "
                         f"(nodes {_hostlist(have.partitions[name][0])})")
    for name, (hosts, max_time, default, tier) in want.partitions.items():
        if name not in have.partitions:
            continue
        l_hosts, l_time, l_default, l_tier = have.partitions[name]
        if hosts != l_hosts:
            lines.append(f"partition {name}: nodes {_hostlist(hosts)} in the profile, {_hostlist(l_hosts)} "
                         "on the cluster")
        if max_time != l_time:
            lines.append(f"partition {name}: max_time {format_time(max_time)} in the profile, {format_time(l_time)} "
                         "on the cluster")
        if default != l_default:
            lines.append(f"partition {name}: default {str(default).lower()} in the profile, "
                         f"{str(l_default).lower()} on the cluster")
        if tier != l_tier:
            lines.append(f"partition {name}: priority_tier {tier} in the profile, {l_tier} on the cluster")
    lines += _switch_drift("leaf switch", "nodes", want.leaves, have.leaves, _hostlist)
    lines += _switch_drift("spine switch", "switches", want.spines, have.spines, _show)
    if live.topology.blocks and (want.leaves or want.spines):
        lines.append(f"switch tree: the profile has one, the cluster uses a block topology "
                     f"({len(live.topology.blocks)} blocks)")
    return lines


def _switch_drift(kind: str, what: str, want: dict, have: dict, show) -> list[str]:
    lines = []
    for name, members in want.items():
        if name not in have:
            lines.append(f"{kind} {name}: in the profile, not on the cluster")
        elif members != have[name]:
            lines.append(f"{kind} {name}: {what} {show(members)} in the profile, {show(have[name])} on the cluster")
    for name, members in have.items():
        if name not in want:
            lines.append(f"{kind} {name}: on the cluster, not in the profile ({what} {show(members)})")
    return lines


# ---------------------------------------------------------------------------------------------
# Entry points (the CLI's, and the live tests' with a runner aimed at the dev cluster)
# ---------------------------------------------------------------------------------------------

def discover(runner: Runner | None = None, name: str | None = None, user: str | None = None) -> str:
    """The draft profile of the cluster that ``runner`` reaches (default: this login node's
    Slurm), as YAML text with FILL IN comments."""
    return render_draft(build_profile(collect(runner or subprocess_runner(), user), name))


def diff_profile(profile: str, runner: Runner | None = None) -> list[str]:
    """Drift between the profile ``profile`` (a name or path, validated by the loader) and the
    cluster that ``runner`` reaches."""
    from ..errors import ConfigError
    from ..spec.profile import load_profile
    from ..spec.schema import to_dict

    loaded = load_profile(profile)
    if loaded.scheduler != "slurm":
        raise ConfigError(profile, "scheduler", f"expected a Slurm profile to compare with the cluster, "
                                                f"got {loaded.scheduler!r}")
    return diff(to_dict(loaded), collect(runner or subprocess_runner()))
