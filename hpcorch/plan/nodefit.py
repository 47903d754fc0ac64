"""Which of a partition's nodes a job fits: its constraint, its per-node needs (GPUs of a type,
CPUs, memory), node counts across node groups, and MIG's one-rank rule. Every check raises the
plan's one-line error through ``fail(key, message)``."""
from __future__ import annotations

from dataclasses import dataclass

from hpcorch.spec import constraint as csyntax
from hpcorch.spec import units
from hpcorch.spec.job import Resources
from hpcorch.spec.profile import ClusterProfile, NodeGroup, NodeType, Partition


def gpu_types(groups: list[NodeGroup]) -> list[str | None]:
    """The GRES types of the groups that have GPUs, once each (None: untyped GRES)."""
    return list(dict.fromkeys(g.spec.gpus.gres_type for g in groups if g.spec.gpus.count))


def check_gpu_type(res, part: Partition, groups: list[NodeGroup], excluded: set[str], fail,
                   count_nodes: bool = True) -> list[NodeGroup]:
    """The groups a job may run on: for a typed request only those of that GRES type, with
    enough GPUs per node and enough usable nodes; Slurm would refuse a type no node has
    ("Invalid generic resource (gres) specification") and leave a too-large one pending."""
    if res.gpu_type is None:
        return groups
    key = f"resources.{res.gpu_type_key}"
    types = [t for t in gpu_types(groups) if t is not None]
    typed = [g for g in groups if g.spec.gpus.count and g.spec.gpus.gres_type == res.gpu_type]
    if not typed:
        have = f"has GPU types {', '.join(types)}" if types else "declares no GPU types (node_types.*.gpus.type)"
        raise fail(key, f"partition {part.name!r} {have}; got {res.gpu_type}")
    most = max(g.spec.gpus.count for g in typed)
    if res.gpus_per_node > most:
        raise fail("resources.gpus_per_node", f"asks for {res.gpus_per_node} {res.gpu_type} GPUs per node, but "
                   f"partition {part.name!r} {res.gpu_type} nodes have at most {most}")
    hosts = [h for g in typed if g.spec.gpus.count >= res.gpus_per_node for h in g.hosts if h not in excluded]
    if count_nodes and res.nodes_min > len(hosts):  # (not when the partition as a whole is too small)
        raise fail("resources.nodes", f"asks for {res.nodes_needed} nodes with GPU type {res.gpu_type}, but partition "
                   f"{part.name!r} has {len(hosts)}{' after exclusions' if excluded else ''}")
    return typed


def constraint_features(constraint: str) -> list[str]:
    """The feature names in a Slurm constraint, in order, once each (counts and operators dropped)."""
    return csyntax.features(csyntax.parse(constraint))


def check_constraint(constraint: str | None, profile: ClusterProfile, part: Partition, *,
                      from_profile: bool, fail) -> None:
    """Refuse a constraint naming a feature no node of the partition has: Slurm would refuse it
    at submit time ("Invalid feature specification"), after the queue wait for a slot in sbatch."""
    if not constraint:
        return
    groups = profile.groups_of(part)
    have = list(dict.fromkeys(f for g in groups for f in g.spec.features))
    unknown = [f for f in constraint_features(constraint) if f not in have]
    if unknown:
        origin = f" (from profile {profile.name!r}'s defaults.constraint)" if from_profile else ""
        raise fail("resources.constraint",
                   f"{constraint!r}{origin} names feature{'s' if len(unknown) > 1 else ''} "
                   f"{', '.join(unknown)} that no node of partition {part.name!r} "
                   f"({', '.join(g.node_type for g in groups)}) has; "
                   f"its features: {', '.join(have) if have else 'none'}")


# ----- node groups: which node types can run the job ------------------------------------------
# Each per-node need: (key, what the job asks per node, what a node type has, a unit). Kept as
# data so that another per-node check (GPU types, for one) is one more entry or one more filter.
@dataclass(frozen=True)
class _Need:
    """One per-node amount the job asks for, and how to read it off a node type."""

    key: str
    asked: int | None
    phrase: str  # how the job asks: "2 tasks x 4 CPUs = 8 CPUs per node"
    brief: str   # the amount alone: "8 CPUs per node"
    unit: str
    have: object  # NodeType -> int


def _node_needs(res: Resources) -> list[_Need]:
    cpus = res.tasks_per_node * res.cpus_per_task
    gpus = f"{res.gpus_per_node} GPUs per node"
    return [
        _Need("resources.gpus_per_node", res.gpus_per_node or None, gpus, gpus, "", lambda nt: nt.gpus.count),
        _Need("resources.cpus_per_task", cpus,
              f"{res.tasks_per_node} tasks x {res.cpus_per_task} CPUs = {cpus} CPUs per node",
              f"{cpus} CPUs per node", "", lambda nt: nt.usable_cpus),  # as Slurm counts, less CoreSpec
        _Need("resources.mem", res.mem_mb, f"{res.mem_mb} MB per node", f"{res.mem_mb} MB per node", " MB",
              lambda nt: nt.memory_mb),
    ]


def _per_node(needs) -> str:
    """'8 GPUs, 64 CPUs and 2000 MB per node'."""
    amounts = [n.brief.removesuffix(" per node") for n in needs]
    return (", ".join(amounts[:-1]) + " and " if len(amounts) > 1 else "") + amounts[-1] + " per node"


def _shortfalls(needs: list[_Need], spec: NodeType) -> list[_Need]:
    """The needs a node of this type cannot meet."""
    return [n for n in needs if n.asked is not None and n.asked > n.have(spec)]


def fit_node_groups(res: Resources, part: Partition, groups: list[NodeGroup], fail) -> list[NodeGroup]:
    """The partition's node groups whose nodes have what the job asks per node; refuse (naming
    the closest) when none has. One need at a time first, so the message names what is short."""
    needs = _node_needs(res)
    for need in needs:
        if need.asked is None:
            continue
        best = max(need.have(g.spec) for g in groups)
        if need.asked > best:
            if all(need.have(g.spec) == best for g in groups):
                raise fail(need.key, f"asks for {need.phrase}, but partition {part.name!r} nodes "
                           f"({', '.join(g.node_type for g in groups)}) have {best}{need.unit}")
            tops = [g.node_type for g in groups if need.have(g.spec) == best]
            raise fail(need.key, f"asks for {need.phrase}, but partition {part.name!r} nodes have at most "
                       f"{best}{need.unit} ({', '.join(tops)})")
    fitting = [g for g in groups if not _shortfalls(needs, g.spec)]
    if not fitting:  # each need is met by some type, but no type meets them all
        closest = min(groups, key=lambda g: len(_shortfalls(needs, g.spec)))
        short = _shortfalls(needs, closest.spec)
        lacks = ", ".join(f"{n.have(closest.spec)}{n.unit} of {n.brief}" for n in short)
        raise fail(short[0].key, f"asks for {_per_node(n for n in needs if n.asked)}, but no node "
                   f"type of partition {part.name!r} has all of that; the closest, {closest.node_type}, "
                   f"has {lacks}")
    return fitting


def check_node_counts(res: Resources, part: Partition, groups: list[NodeGroup], fitting: list[NodeGroup],
                       constraint: str | None, excluded: set[str], fail) -> list[NodeGroup]:
    """Enough nodes that both fit the job and satisfy its constraint (Slurm would leave the job
    pending forever otherwise); also the ``feature*N`` counts. Returns the node groups the job
    may land on."""
    expr = csyntax.parse(constraint) if constraint else None
    choices = csyntax.alternatives(expr) if expr else [None]

    def hosts_of(gs: list[NodeGroup]) -> list[str]:
        return [h for g in gs for h in g.hosts if h not in excluded]

    def eligible(alt) -> list[NodeGroup]:
        return [g for g in fitting if alt is None or csyntax.matches(alt, frozenset(g.spec.features))]

    ranked = sorted((-len(hosts_of(eligible(alt))), i) for i, alt in enumerate(choices))
    best = choices[ranked[0][1]]
    groups_ok = eligible(best)
    hosts = hosts_of(groups_ok)
    if res.nodes_min > len(hosts):
        qualifiers = []
        if expr is not None:
            one_feature = len(csyntax.features(expr)) == 1 and not csyntax.counted(expr)
            qualifiers.append(f"with feature {constraint}" if one_feature
                              else f"matching {constraint!r}" if len(choices) == 1
                              else f"all matching one alternative of {constraint!r}")
        if len(fitting) < len(groups):
            dropped = [g for g in groups if g not in fitting]
            needs = _shortfalls(_node_needs(res), dropped[0].spec)
            qualifiers.append(f"with {_per_node(needs)}")
        where = f" ({units.compress_hostlist(hosts)})" if hosts else ""
        raise fail("resources.constraint" if expr is not None else "resources.nodes",
                   f"asks for {res.nodes_needed} nodes {' and '.join(qualifiers)}, but partition {part.name!r} has "
                   f"{len(hosts)}{' after exclusions' if excluded & set(part.hosts) else ''}{where}")
    for term, count in csyntax.counted(best) if best is not None else []:
        have = hosts_of([g for g in groups_ok if csyntax.matches(term, frozenset(g.spec.features))])
        if count > len(have):
            raise fail("resources.constraint", f"asks for {count} nodes with {csyntax.show(term, top=False)} "
                       f"({constraint}), but partition {part.name!r} has {len(have)}"
                       f"{f' ({units.compress_hostlist(have)})' if have else ''}")
    # With a matching OR, the job may land on any alternative that has enough nodes.
    fits = [alt for alt in choices if len(hosts_of(eligible(alt))) >= res.nodes_min]
    return [g for g in fitting if any(g in eligible(alt) for alt in fits)]


def check_ranks_per_gpu(res: Resources, eligible: list[NodeGroup], fail, warnings: list[str]) -> None:
    """A GPU job runs one rank per GPU: NCCL refuses two ranks on one GPU (refused); fewer ranks
    than GPUs leave GPUs allocated and idle (a warning: a rank may want a node's memory)."""
    if not res.gpus_per_node or res.tasks_per_node == res.gpus_per_node:
        return
    if any(g.spec.gpus.mig for g in eligible):
        return  # check_mig says what MIG allows
    if res.tasks_per_node > res.gpus_per_node:
        raise fail("resources.tasks_per_node", f"expected at most {res.gpus_per_node} (one rank per GPU, "
                   f"resources.gpus_per_node), got {res.tasks_per_node}: NCCL refuses two ranks on one GPU")
    warnings.append(f"resources.tasks_per_node {res.tasks_per_node} with {res.gpus_per_node} GPUs per node: "
                    f"each rank drives one GPU, so {res.gpus_per_node - res.tasks_per_node} GPU(s) per node "
                    f"sit idle; set tasks_per_node to {res.gpus_per_node}")


def check_mig(res: Resources, eligible: list[NodeGroup], fail) -> None:
    """A process sees one MIG instance, and NCCL cannot run collectives between MIG instances:
    on MIG slices a job is one rank with one slice."""
    mig = [g for g in eligible if g.spec.gpus.mig]
    if not mig or not res.gpus_per_node:
        return
    slices = f"MIG slices ({mig[0].spec.gpus.mig} on {mig[0].node_type})"
    if res.world_size > 1:
        raise fail("resources.nodes" if res.nodes > 1 else "resources.tasks_per_node",
                   f"asks for {res.world_size} ranks on {slices}: NCCL cannot run collectives between MIG "
                   f"instances, so a job there is 1 node x 1 task")
    if res.gpus_per_node > 1:
        raise fail("resources.gpus_per_node", f"asks for {res.gpus_per_node} GPUs per node on {slices}: "
                   f"a process sees only one MIG instance")
