"""A cluster profile from a live Slurm cluster (``hpcorch profile discover``).

:func:`build_profile` turns a :class:`~hpcorch.cluster.live.LiveCluster` into a
:class:`~hpcorch.cluster.draft.Draft` (the profile as plain data plus the comments that say what
to fill in and what was left out); :func:`discover` collects, builds and renders it as YAML.

The pieces live by concept, each testable alone: :mod:`.slurmtext` (pure parsers of ``scontrol``
and ``sacctmgr`` output), :mod:`.live` (running the commands: :func:`collect`), :mod:`.naming`
(node types), :mod:`.draft` (YAML with comments) and :mod:`.drift` (``hpcorch profile diff``).
Their public names are importable from here too, the module the CLI's callers and tests use.

Nothing here imports torch or submitit; the spec layer is used only for names, hostlists and times.
"""
from __future__ import annotations

from typing import Any

from hpcorch.cluster.draft import Draft, render_draft
from hpcorch.cluster.drift import View, diff, diff_profile, live_view, profile_view
from hpcorch.cluster.live import LiveCluster, Runner, collect, partition_hosts, subprocess_runner
from hpcorch.cluster.naming import node_types, safe_name, valid_name
from hpcorch.cluster.slurm import SlurmError
from hpcorch.cluster.slurmtext import (
    ASSOC_FORMAT,
    NULLS,
    QOS_FORMAT,
    Assoc,
    Block,
    Gres,
    Node,
    Qos,
    Shape,
    SlurmPartition,
    Switch,
    Topology,
    node_from_record,
    parse_assoc,
    parse_config,
    parse_gres,
    parse_nodes,
    parse_partitions,
    parse_qos,
    parse_records,
    parse_topology,
    profile_time,
    value,
)
from hpcorch.spec.profile import MIG_PROFILE_RE
from hpcorch.spec.units import compress_hostlist

__all__ = [  # this module's own names, then the ones it re-exports for its callers
    "build_profile", "discover",
    "Draft", "render_draft", "View", "diff", "diff_profile", "live_view", "profile_view", "LiveCluster", "Runner",
    "collect", "subprocess_runner", "node_types", "ASSOC_FORMAT", "NULLS", "QOS_FORMAT", "Assoc", "Block", "Gres",
    "Node", "Qos", "Shape", "SlurmPartition", "Switch", "Topology", "node_from_record", "parse_assoc",
    "parse_config", "parse_gres", "parse_nodes", "parse_partitions", "parse_qos", "parse_records", "parse_topology",
    "value",
]


def _node_type_data(shape: Shape) -> dict:
    data: dict[str, Any] = {"cpus": shape.cpus, "memory_mb": shape.memory_mb}
    if shape.arch:
        data["arch"] = shape.arch
    data["threads_per_core"] = shape.threads_per_core
    if shape.gpu_count:
        gpus: dict[str, Any] = {"count": shape.gpu_count}
        if shape.gpu_type:
            gpus["type"] = shape.gpu_type
            if MIG_PROFILE_RE.fullmatch(shape.gpu_type):  # the profile's own rule for MIG names
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


def build_profile(live: LiveCluster, name: str | None = None) -> Draft:
    """The draft profile for ``live``: node types, partitions (``node_groups`` when a partition
    spans several types), the switch tree, QOS and the user's only account where accounting
    answered; comments say what the user must fill in and what Slurm reported that a profile
    cannot hold."""
    draft = _new_draft(live, name)
    partitions_hosts = _usable_partitions(live, draft)
    in_partitions = {h for _, hosts in partitions_hosts for h in hosts}
    type_of = _add_node_types(live, in_partitions, draft)
    draft.data["partitions"] = []
    for part, hosts in partitions_hosts:
        draft.data["partitions"].append(_partition_entry(part, hosts, type_of, live, draft))
    _add_qos(live, draft)
    _add_network(live, in_partitions, draft)
    draft.note("environment", "FILL IN: what every job needs loaded, e.g.",
               "environment:", "  modules: [cuda/12.4, nccl/2.21]", "  variables: {OMP_NUM_THREADS: 1}")
    draft.note("launch", "FILL IN: the Python that runs the ranks on compute nodes, e.g.",
               "launch: {python: /sw/venvs/torch/bin/python}")
    _add_defaults(live, draft)
    return draft


def _new_draft(live: LiveCluster, name: str | None) -> Draft:
    """The draft's identity (name, scheduler, description) and the header comments that tell
    the user what Slurm could report and what they must fill in."""
    name = safe_name(name or live.config.get("ClusterName") or "cluster")
    draft = Draft({"name": name, "scheduler": "slurm",
                   "description": f"Discovered from Slurm cluster "
                                  f"{live.config.get('ClusterName', name)} (Slurm {live.version})"})
    draft.note("", "Draft written by `hpcorch profile discover` from the live cluster. Slurm reported",
               "the nodes, GPU counts and types, features, partitions, switch tree and QOS below;",
               "the lines marked FILL IN are what Slurm cannot know. Check them, then",
               "`hpcorch profile validate FILE` and `hpcorch profile diff FILE` later for drift.")
    draft.note("login", "FILL IN (optional): the login node, for submitting from elsewhere over SSH:",
               "login: {host: login.example.org, user: me}")
    return draft


def _usable_partitions(live: LiveCluster, draft: Draft) -> list[tuple[SlurmPartition, list[str]]]:
    """Each partition a profile can hold, with its hosts that scontrol describes; the rest are
    noted as left out. Raises when none is left, since a profile needs one."""
    node_names = {n.name for n in live.nodes}
    partitions_hosts: list[tuple[SlurmPartition, list[str]]] = []
    for part in live.partitions:
        hosts = partition_hosts(part, live)
        unknown = [h for h in hosts if h not in node_names]
        hosts = [h for h in hosts if h in node_names]
        if unknown:
            draft.note("partitions", f"Partition {part.name}: Slurm lists {compress_hostlist(unknown)}, "
                                     "which scontrol shows no node for; left out.")
        if not hosts or not valid_name(part.name):
            draft.note("partitions", f"Left out: partition {part.name!r} "
                                     f"({'no nodes' if not hosts else 'a name a profile cannot hold'}).")
            continue
        partitions_hosts.append((part, hosts))
    if not partitions_hosts:
        raise SlurmError("the cluster reports no partition with nodes; a profile needs at least one")
    return partitions_hosts


_GPU_FILL_IN = ("FILL IN: what Slurm cannot report about these GPUs, e.g.",
                "model: A100  # GPU model name",
                "memory_gb: 80",
                "interconnect: nvlink  # nvlink | xgmi | pcie | none",
                "peak_tflops: 312.0  # dense bf16 TFLOP/s per GPU, the denominator of MFU",
                "vendor: nvidia  # nvidia | amd")


def _add_node_types(live: LiveCluster, in_partitions: set[str], draft: Draft) -> dict[str, str]:
    """``node_types`` for the nodes of the kept partitions, with their members and what to fill
    in noted; returns each such node's type name."""
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
            _note_gpus(path + ".gpus", members, draft)
    if outside:
        draft.note("node_types", f"Left out: {compress_hostlist(outside)} (in no partition).")
    return type_of


def _note_gpus(path: str, members: list[Node], draft: Draft) -> None:
    """What to fill in about a node type's GPUs, and the other GPU kinds its nodes offer (a
    node type describes one)."""
    draft.note(path, *_GPU_FILL_IN)
    others = sorted({f"gpu:{g.type or ''}:{g.count}".replace("::", ":")
                     for n in members for g in n.other_gpus})
    if others:
        draft.note(path, f"These nodes also offer {', '.join(others)}: a node type holds one "
                         "GPU kind, so only the most numerous is described.")


def _partition_entry(part: SlurmPartition, hosts: list[str], type_of: dict[str, str], live: LiveCluster,
                     draft: Draft) -> dict[str, Any]:
    """One ``partitions`` entry (appended next, so its index is the current length), with notes
    on what Slurm says about it that the entry cannot hold."""
    entry: dict[str, Any] = {"name": part.name, **_partition_nodes(hosts, type_of)}
    entry["max_time"] = profile_time(part.max_time)
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
    return entry


def _partition_nodes(hosts: list[str], type_of: dict[str, str]) -> dict[str, Any]:
    """``nodes`` and ``node_type`` when the partition's hosts are of one type, else one
    ``node_groups`` entry per type."""
    groups: dict[str, list[str]] = {}
    for host in hosts:
        groups.setdefault(type_of[host], []).append(host)
    if len(groups) == 1:
        (type_name, members), = groups.items()
        return {"nodes": compress_hostlist(members), "node_type": type_name}
    return {"node_groups": [{"nodes": compress_hostlist(m), "node_type": t} for t, m in groups.items()]}


def _add_network(live: LiveCluster, in_partitions: set[str], draft: Draft) -> None:
    """``network.switches`` from Slurm's switch tree; a block topology is only noted (profiles
    cannot hold one yet), and the fabric is left to fill in."""
    network: dict[str, Any] = {}
    tree = _switch_tree(live, in_partitions, draft)
    if tree:
        network["switches"] = tree
    blocks = live.topology.blocks
    if blocks:
        draft.note("network", f"Slurm reports a block topology ({live.topology_plugin}): "
                              f"{len(blocks)} blocks; profiles have no block topology yet,",
                   "so it is left out:",
                   *(f"  BlockName={b.name} Nodes={compress_hostlist(b.nodes)}" for b in blocks[:20]),
                   *([f"  ... and {len(blocks) - 20} more"] if len(blocks) > 20 else []))
    # Written inside `network:` when there is one, else as a whole commented-out block.
    pad, head = ("", []) if network else ("  ", ["network:"])
    draft.note("network", "FILL IN: the fabric and its adapters, e.g.", *head,
               f"{pad}fabric: infiniband  # infiniband | roce | slingshot | efa | omnipath | ethernet",
               f"{pad}infiniband: {{hcas: [mlx5_0, mlx5_1], ports: 1, link_rate_gbps: 200, rails_per_node: 2}}")
    if network:
        draft.data["network"] = network


def _add_defaults(live: LiveCluster, draft: Draft) -> None:
    """``defaults.account`` when the user's associations name one account; otherwise the
    choices (or why accounting did not answer) as a comment."""
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
        if not valid_name(q.name):
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


def discover(runner: Runner | None = None, name: str | None = None, user: str | None = None) -> str:
    """The draft profile of the cluster that ``runner`` reaches (default: this login node's
    Slurm), as YAML text with FILL IN comments."""
    return render_draft(build_profile(collect(runner or subprocess_runner(), user), name))
