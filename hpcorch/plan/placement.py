"""Topology-aware placement: how few leaf switches (or blocks) a job's nodes can share, and the
``#SBATCH`` line that asks Slurm for it.

A job whose nodes are scattered over many leaf switches sends its collectives through the
spine, where other jobs' traffic competes (Meta reports over 30 % lost to fragmented placement;
see ``../shared/notes/anchors-wave2.md`` section 5). Slurm's topology/tree can keep a job under
few leaves, but only when asked: ``--switches=K@WAIT`` holds the job pending up to WAIT for an
allocation spanning at most K leaves. The plan computes the smallest K the job can have from the
profile's tree and the nodes the job may use (its partition's eligible node groups, minus
exclusions), and asks for it. On a block topology (topology/block, Slurm 23.11+) the equivalent
is ``--segment=S`` (Slurm 24.05+): the job's nodes come in segments of S nodes, each inside one
block.

Torch-free and Slurm-free: a dry run computes all of it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpcorch.errors import PlanError
from hpcorch.spec.network import BlockTopology, SwitchTree
from hpcorch.spec.placement import SEGMENT_SINCE, Placement, version_text
from hpcorch.spec.profile import ClusterProfile


@dataclass(frozen=True)
class PlacementPlan:
    """What the plan asks of Slurm's topology plugin.

    ``domains`` is the fewest leaf switches (``kind`` "tree") or blocks ("block") the job's
    nodes fit in; ``domain_size`` the largest leaf's usable nodes (tree) or the segment size
    (block); ``names`` one choice of that many leaves or blocks (the largest ones);
    ``directive`` the whole ``#SBATCH`` option, or None when nothing is asked.
    """

    kind: str
    nodes: int
    domains: int
    domain_size: int
    directive: str | None
    names: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the plan table: ``8 nodes fit in 1 leaf switch (leaf size 32)``."""
        if self.kind == "tree":
            unit = "leaf switch" if self.domains == 1 else "leaf switches"
            return f"{self.nodes} nodes fit in {self.domains} {unit} (leaf size {self.domain_size})"
        unit = "block" if self.domains == 1 else "blocks"
        return f"{self.nodes} nodes in {self.domains} {unit}, segments of {self.domain_size}"

    def to_dict(self) -> dict:
        """The plan's JSON form (``hpcorch plan --json``)."""
        key = "leaf_switches" if self.kind == "tree" else "blocks"
        return {"topology": self.kind, "nodes": self.nodes, key: self.domains,
                ("leaf_size" if self.kind == "tree" else "segment"): self.domain_size,
                "names": list(self.names), "directive": self.directive, "summary": self.describe()}


def fewest_domains(capacities: list[int], nodes: int) -> int | None:
    """The fewest of ``capacities`` (usable nodes per leaf) whose sum reaches ``nodes``, None if
    all of them together do not. Taking the largest first is exact: any k leaves hold at most
    the k largest capacities' sum."""
    total = 0
    for count, capacity in enumerate(sorted(capacities, reverse=True), 1):
        total += capacity
        if total >= nodes:
            return count
    return None if nodes > 0 else 0


def usable_per_leaf(tree: SwitchTree, usable: set[str]) -> dict[str, int]:
    """leaf name -> how many of its nodes the job may use (leaves with none left out)."""
    counts = {leaf.name: sum(1 for h in leaf.hosts if h in usable) for leaf in tree.leaves}
    return {name: n for name, n in counts.items() if n}


def segment_size(capacities: list[int], base: int, nodes: int) -> int:
    """The largest segment size S for ``--segment``: S divides ``nodes`` (sbatch requires it),
    S is at most the planning base block size, and the blocks' usable nodes hold ``nodes / S``
    segments of S each. 1 when nothing larger works (and always fits)."""
    for size in range(min(base, nodes), 1, -1):
        if nodes % size == 0 and sum(c // size for c in capacities) >= nodes // size:
            return size
    return 1


def plan_placement(placement: Placement, profile: ClusterProfile, hosts: list[str], nodes: int,
                   fail: Callable[[str, str], PlanError], notes: list[str],
                   warnings: list[str]) -> PlacementPlan | None:
    """The placement of a job of ``nodes`` nodes that may use ``hosts`` (its eligible nodes
    after exclusions). None when there is nothing to place: a local profile, a one-node job, or
    a profile without topology (unless the job names a switch count). Refusals go through
    ``fail``; doubts are appended to ``warnings``, facts to ``notes``."""
    if profile.scheduler != "slurm" or nodes < 2:
        return None
    net, mode = profile.network, placement.switches
    usable = set(hosts)
    if net.blocks is not None:
        return _blocks(placement, profile, net.blocks, usable, nodes, fail, notes, warnings)
    if not net.switches.leaves:
        if isinstance(mode, int):
            directive = f"--switches={mode}@{placement.max_wait_text}"
            warnings.append(f"placement.switches {mode}: profile {profile.name!r} describes no switch tree; "
                            f"{directive} is passed to Slurm unchecked")
            return PlacementPlan("tree", nodes, mode, 0, directive)
        return None
    return _tree(placement, profile, usable_per_leaf(net.switches, usable), nodes, fail, notes, warnings)


def _tree(placement: Placement, profile: ClusterProfile, per_leaf: dict[str, int], nodes: int, fail,
          notes: list[str], warnings: list[str]) -> PlacementPlan | None:
    mode = placement.switches
    fewest = fewest_domains(list(per_leaf.values()), nodes)
    if fewest is None:
        warnings.append(f"the switch tree of profile {profile.name!r} covers {sum(per_leaf.values())} of the "
                        f"nodes this job may use, fewer than its {nodes}: no --switches is asked")
        return None
    largest = max(per_leaf.values())
    names = tuple(sorted(per_leaf, key=per_leaf.get, reverse=True)[:fewest])
    if isinstance(mode, int):
        if mode < fewest:
            raise fail("placement.switches", f"asks for at most {mode} leaf switch{'es' if mode > 1 else ''}, "
                       f"but {nodes} nodes need at least {fewest} (the largest leaf holds {largest} usable nodes)")
        count = mode
    else:
        count = fewest
    directive = None if mode == "off" else f"--switches={count}@{placement.max_wait_text}"
    if fewest > 1:
        warnings.append(f"{nodes} nodes span at least {fewest} leaf switches (the largest leaf holds {largest} "
                        f"usable nodes): collectives cross the spine")
    if mode == "off":
        notes.append("placement.switches is off: Slurm places the job on any leaf switches")
    return PlacementPlan("tree", nodes, fewest, largest, directive, names)


def _blocks(placement: Placement, profile: ClusterProfile, topo: BlockTopology, usable: set[str], nodes: int,
            fail, notes: list[str], warnings: list[str]) -> PlacementPlan | None:
    mode = placement.switches
    if isinstance(mode, int):
        raise fail("placement.switches", f"asks for {mode} leaf switches, but profile {profile.name!r} describes "
                   "blocks (topology/block), not a switch tree: use auto (--segment) or off")
    per_block = {b.name: sum(1 for h in b.hosts if h in usable) for b in topo.blocks}
    per_block = {name: n for name, n in per_block.items() if n}
    if sum(per_block.values()) < nodes:
        warnings.append(f"the blocks of profile {profile.name!r} hold {sum(per_block.values())} of the nodes this "
                        f"job may use, fewer than its {nodes}: no --segment is asked")
        return None
    size = segment_size(list(per_block.values()), topo.base, nodes)
    segments_per_block = {name: n // size for name, n in per_block.items()}
    count = fewest_domains(list(segments_per_block.values()), nodes // size)
    names = tuple(sorted(segments_per_block, key=segments_per_block.get, reverse=True)[:count])
    release = profile.slurm_release
    directive = None
    if mode == "off":
        notes.append("placement.switches is off: no --segment is asked")
    elif size == 1:
        notes.append(f"no segment size above 1 divides {nodes} nodes and fits the blocks (base {topo.base}): "
                     "no --segment is asked")
    elif release is not None and release < SEGMENT_SINCE:
        notes.append(f"Slurm {profile.slurm_version} has no --segment (it came in {version_text(SEGMENT_SINCE)}): "
                     "the block plugin places the job by itself")
    else:
        directive = f"--segment={size}"
    if count > 1:
        warnings.append(f"{nodes} nodes span at least {count} blocks (segments of {size}): collectives cross "
                        "between blocks")
    return PlacementPlan("block", nodes, count, size, directive, names)
