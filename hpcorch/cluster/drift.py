"""Drift between a profile and the live cluster (``hpcorch profile diff``): both sides as a
:class:`View`, and :func:`diff`, one line per way they disagree.

Only what Slurm reports is compared (hosts, node shapes, partitions, the switch tree); what it
cannot report (GPU model, memory, peak TFLOP/s, fabric, ...) is never drift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcorch.cluster.live import LiveCluster, Runner, collect, partition_hosts, subprocess_runner
from hpcorch.cluster.naming import node_types, valid_name
from hpcorch.cluster.slurmtext import Shape, profile_time
from hpcorch.spec.profile import ClusterProfile, NodeType
from hpcorch.spec.units import compress_hostlist, format_time, parse_time


@dataclass
class View:
    """What diff compares, from either side: host -> (node type, shape); partition ->
    (hosts, max_time seconds, default, priority_tier); switch -> nodes or children."""

    hosts: dict[str, tuple[str, Shape]]
    partitions: dict[str, tuple[frozenset, int | None, bool, int]]
    leaves: dict[str, frozenset]
    spines: dict[str, frozenset]


def profile_view(profile: ClusterProfile) -> View:
    """A loaded profile as a :class:`View`: its node groups, hosts, time limits and switch tree
    as the loader resolved them (the GRES type of MIG slices included: ``gpus.gres_type``)."""
    hosts: dict[str, tuple[str, Shape]] = {}
    partitions = {}
    for part in profile.partitions:
        for group in profile.groups_of(part):
            shape = _shape(group.spec)
            for host in group.hosts:
                hosts.setdefault(host, (group.node_type, shape))
        partitions[part.name] = (frozenset(part.hosts), part.max_time_s, part.default, part.priority_tier)
    tree = profile.network.switches
    leaves = {leaf.name: frozenset(leaf.hosts) for leaf in tree.leaves}
    spines = {spine.name: frozenset(spine.switches) for spine in tree.spines}
    return View(hosts, partitions, leaves, spines)


def _shape(nt: NodeType) -> Shape:
    """What Slurm would report for a node of type ``nt``."""
    count = nt.gpus.count
    return Shape(cpus=nt.cpus, memory_mb=nt.memory_mb, gpu_count=count,
                 gpu_type=nt.gpus.gres_type if count else None,
                 features=tuple(sorted(set(nt.features))), threads_per_core=nt.threads_per_core, arch=nt.arch)


def live_view(live: LiveCluster) -> View:
    """The live cluster as a :class:`View` (node types named as discover would name them).
    Nodes in no partition are left out, as a profile cannot hold them."""
    node_names = {n.name for n in live.nodes}
    partitions = {}
    in_partitions: set[str] = set()
    for part in live.partitions:
        hosts = [h for h in partition_hosts(part, live) if h in node_names]
        if not hosts or not valid_name(part.name):
            continue  # a profile cannot hold it (discover leaves it out too)
        in_partitions.update(hosts)
        partitions[part.name] = (frozenset(hosts), parse_time(profile_time(part.max_time)), part.default,
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


def diff(profile: ClusterProfile, live: LiveCluster) -> list[str]:
    """One line per way the profile and the live cluster disagree; empty when
    they agree. Fields Slurm cannot report (GPU model, memory, peak TFLOP/s, fabric, ...) are
    never drift; neither is a node type's name."""
    want, have = profile_view(profile), live_view(live)
    lines = _host_drift(want, have) + _shape_drift(want, have) + _partition_drift(want, have)
    lines += _switch_drift("leaf switch", "nodes", want.leaves, have.leaves, _hostlist)
    lines += _switch_drift("spine switch", "switches", want.spines, have.spines, _show)
    if live.topology.blocks and (want.leaves or want.spines):
        lines.append(f"switch tree: the profile has one, the cluster uses a block topology "
                     f"({len(live.topology.blocks)} blocks)")
    return lines


def _host_drift(want: View, have: View) -> list[str]:
    """Hosts on one side only, one line per side."""
    lines = []
    gone = [h for h in want.hosts if h not in have.hosts]
    new = [h for h in have.hosts if h not in want.hosts]
    if gone:
        lines.append(f"nodes {_hostlist(gone)}: in the profile, not on the cluster")
    if new:
        lines.append(f"nodes {_hostlist(new)}: on the cluster, not in the profile")
    return lines


def _shape_drift(want: View, have: View) -> list[str]:
    """Node shape fields that differ on hosts of both sides. Per field, hosts with the same
    (profile value, cluster value) share one line, so a rack of changed nodes reads as one."""
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
    return [f"nodes {_hostlist(hosts)} (node type {type_name}): {label} {_show(mine)} in the profile, "
            f"{_show(theirs)} on the cluster"
            for (type_name, label, mine, theirs), hosts in drift.items()]


def _partition_drift(want: View, have: View) -> list[str]:
    """Partitions on one side only, then the fields of partitions on both that differ."""
    lines = [f"partition {name}: in the profile, not on the cluster"
             for name in want.partitions if name not in have.partitions]
    lines += [f"partition {name}: on the cluster, not in the profile (nodes {_hostlist(have.partitions[name][0])})"
              for name in have.partitions if name not in want.partitions]
    for name, fields in want.partitions.items():
        if name in have.partitions:
            lines += _partition_field_drift(name, fields, have.partitions[name])
    return lines


def _partition_field_drift(name: str, mine: tuple, theirs: tuple) -> list[str]:
    """The (hosts, max_time, default, priority_tier) of one partition, profile against cluster."""
    (hosts, max_time, default, tier), (l_hosts, l_time, l_default, l_tier) = mine, theirs
    lines = []
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


def diff_profile(profile: str, runner: Runner | None = None) -> list[str]:
    """Drift between the profile ``profile`` (a name or path, validated by the loader) and the
    cluster that ``runner`` reaches."""
    from hpcorch.errors import ConfigError
    from hpcorch.spec.profile import load_profile

    loaded = load_profile(profile)
    if loaded.scheduler != "slurm":
        raise ConfigError(profile, "scheduler", f"expected a Slurm profile to compare with the cluster, "
                                                f"got {loaded.scheduler!r}")
    return diff(loaded, collect(runner or subprocess_runner()))
