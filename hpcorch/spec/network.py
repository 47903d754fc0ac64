"""A profile's network: the fabric kind, the InfiniBand/RoCE adapters, NCCL's interfaces and
topology file, and Slurm's topology (a switch tree, or blocks)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from hpcorch.spec import units
from hpcorch.spec.expand import check_expandable
from hpcorch.spec.schema import Invalid, check_at_most, check_name, check_positive


def hosts_of(field: str, expr: str) -> list[str]:
    """``expr`` (a Slurm hostlist) expanded; a bad one is an ``Invalid`` error at ``field``."""
    try:
        return units.expand_hostlist(expr)
    except ValueError as exc:
        raise Invalid(field, str(exc)) from None


MAX_PORTS = 254
MAX_RAILS = 1024
MAX_LINK_GBPS = 100_000


@dataclass
class InfiniBand:
    """RDMA adapters: InfiniBand or RoCE HCAs (mlx5_0), or Omni-Path's (hfi1_0)."""

    hcas: list[str]
    ports: int = 1
    link_rate_gbps: int = 200
    rails_per_node: int = 1
    gid_index: int | None = None  # RoCE: the GID table entry NCCL uses (NCCL_IB_GID_INDEX)

    def __post_init__(self):
        for i, hca in enumerate(self.hcas):
            check_name(f"hcas[{i}]", hca, "an HCA name such as mlx5_0")
        check_positive(self, "ports", "link_rate_gbps", "rails_per_node")
        # Each HCA port becomes an entry of the pre-flight's list and of NCCL_IB_HCA.
        check_at_most(self, MAX_PORTS, "ports per adapter; InfiniBand port numbers are 8-bit", "ports")
        check_at_most(self, MAX_LINK_GBPS, "Gb/s; no link is faster", "link_rate_gbps")
        if len(self.hcas) * self.ports > MAX_RAILS:
            raise Invalid("hcas", f"expected at most {MAX_RAILS} adapter ports per node (hcas x ports), "
                                  f"got {len(self.hcas)} x {self.ports}")
        if self.gid_index is not None and not 0 <= self.gid_index <= 255:
            raise Invalid("gid_index", f"expected a GID index 0-255, got {self.gid_index}")
        if self.rails_per_node > len(self.hcas) * self.ports:
            raise Invalid("rails_per_node", f"expected at most {len(self.hcas) * self.ports} "
                                            f"(HCAs x ports), got {self.rails_per_node}")


@dataclass
class NamedNodes:
    """A named group of nodes given as a hostlist: a leaf switch, a block."""

    name: str
    nodes: str
    kind: ClassVar[str] = "group"           # for "expected a KIND name"
    if_empty: ClassVar[str] = "expected the group's nodes as a hostlist"

    def __post_init__(self):
        check_name("name", self.name, f"a {self.kind} name")
        if not self.nodes.strip():
            raise Invalid("nodes", self.if_empty)
        self.hosts = hosts_of("nodes", self.nodes)


@dataclass
class LeafSwitch(NamedNodes):
    """A leaf switch of ``switches:`` and the nodes cabled to it."""

    kind: ClassVar[str] = "switch"
    if_empty: ClassVar[str] = "expected the leaf's nodes as a hostlist; Slurm refuses a leaf switch without nodes"


@dataclass
class SpineSwitch:
    """A switch above the leaves: the child switches it connects."""

    name: str
    switches: list[str]

    def __post_init__(self):
        check_name("name", self.name, "a switch name")
        if not self.switches:
            raise Invalid("switches", "expected at least one child switch; a childless spine connects nothing")
        for j, child in enumerate(self.switches):
            if child == self.name:
                raise Invalid(f"switches[{j}]", f"spine {self.name!r} lists itself")


@dataclass
class SwitchTree:
    """Slurm's topology/tree: leaves hold nodes, spines hold leaves or spines.

    Refused as Slurm would refuse them or route around them: duplicate switch names, unknown
    children, cycles, a node under two leaves, and (once there are spines) switches not all
    under one root. Slurm only warns "no switch can reach all nodes" for the last, but then it
    never places a job across the parts, so a job that fits the cluster pends forever: a
    profile describing that is almost certainly a typo, and a separate profile (or partition)
    is the honest way to describe separate fabrics. A tree of leaves only stays allowed: that
    is how a flat cluster of islands is described on purpose.
    """

    leaves: list[LeafSwitch] = field(default_factory=list)
    spines: list[SpineSwitch] = field(default_factory=list)

    def __post_init__(self):
        self._check_names()
        self._check_leaf_nodes()
        children = {spine.name: spine.switches for spine in self.spines}
        for i, spine in enumerate(self.spines):
            for j, child in enumerate(spine.switches):
                if child not in children and child not in self._kind:
                    raise Invalid(f"spines[{i}].switches[{j}]", f"expected a known switch, got {child!r}")
        self._check_cycles(children)
        if self.spines:
            self._check_one_root(children)

    def _check_names(self) -> None:
        self._kind: dict[str, str] = {}  # switch name -> its key path, for "duplicate" messages
        for key, switches in (("leaves", self.leaves), ("spines", self.spines)):
            for i, switch in enumerate(switches):
                if switch.name in self._kind:
                    raise Invalid(f"{key}[{i}].name", f"duplicate switch {switch.name!r} "
                                                      f"(already {self._kind[switch.name]})")
                self._kind[switch.name] = f"{key}[{i}]"

    def _check_leaf_nodes(self) -> None:
        # Slurm's tree gives each node one leaf: under two, it picks one and the other lies.
        leaf_of: dict[str, int] = {}
        for i, leaf in enumerate(self.leaves):
            clash = [h for h in leaf.hosts if h in leaf_of]
            if clash:
                first = self.leaves[leaf_of[clash[0]]].name
                raise Invalid(f"leaves[{i}].nodes", f"nodes {units.brief_hosts(clash)} are already under "
                                                    f"leaf {first!r}; a node belongs to one leaf switch")
            leaf_of.update(dict.fromkeys(leaf.hosts, i))

    def _check_cycles(self, children: dict[str, list[str]]) -> None:
        """Depth-first over spines, iteratively (no recursion limit at thousands of switches)."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for i, root in enumerate(self.spines):
            if state.get(root.name):
                continue
            state[root.name] = 1
            stack, path = [(root.name, iter(children[root.name]))], [root.name]
            while stack:
                name, it = stack[-1]
                child = next((c for c in it if c in children and state.get(c) != 2), None)
                if child is None:
                    state[name] = 2
                    stack.pop()
                    path.pop()
                elif state.get(child) == 1:
                    cycle = path[path.index(child):] + [child]
                    raise Invalid(f"spines[{i}].switches", f"cycle among spines: {' -> '.join(cycle)}")
                else:
                    state[child] = 1
                    stack.append((child, iter(children[child])))
                    path.append(child)

    def _check_one_root(self, children: dict[str, list[str]]) -> None:
        listed = {c for spine in self.spines for c in spine.switches}
        roots = [name for name in self._kind if name not in listed]
        if len(roots) > 1:
            raise Invalid("spines", f"expected every switch under one root spine, got {len(roots)} roots "
                                    f"({units.brief_hosts(roots)}); Slurm cannot place a job across "
                                    f"them (\"no switch can reach all nodes\")")


@dataclass
class Block(NamedNodes):
    """A block of ``blocks:`` (Slurm's topology/block) and its nodes."""

    kind: ClassVar[str] = "block"
    if_empty: ClassVar[str] = "expected the block's nodes as a hostlist"


@dataclass
class BlockTopology:
    """Slurm's topology/block (23.11+): nodes in blocks of fast interconnect (an NVL72 rack, a
    leaf switch), ``block_sizes`` the planning base size and the larger sizes Slurm may join
    blocks into, each a power of two times the one before (topology.conf ``BlockSizes``).
    Empty: Slurm's default, the base is the smallest block's node count."""

    blocks: list[Block]
    block_sizes: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.blocks:
            raise Invalid("blocks", "expected at least one block")
        seen: dict[str, int] = {}
        block_of: dict[str, int] = {}
        for i, block in enumerate(self.blocks):
            if block.name in seen:
                raise Invalid(f"blocks[{i}].name",
                              f"duplicate block {block.name!r} (already blocks[{seen[block.name]}])")
            seen[block.name] = i
            clash = [h for h in block.hosts if h in block_of]
            if clash:
                first = self.blocks[block_of[clash[0]]].name
                raise Invalid(f"blocks[{i}].nodes", f"nodes {units.brief_hosts(clash)} are already in block "
                                                    f"{first!r}; a node belongs to one block")
            block_of.update(dict.fromkeys(block.hosts, i))
        for j, size in enumerate(self.block_sizes):
            if size < 1:
                raise Invalid(f"block_sizes[{j}]", f"expected a positive node count, got {size}")
            if j and (size <= self.block_sizes[j - 1] or size % self.block_sizes[j - 1]
                      or (size // self.block_sizes[j - 1]) & (size // self.block_sizes[j - 1] - 1)):
                raise Invalid(f"block_sizes[{j}]", f"expected a power of two times {self.block_sizes[j - 1]} "
                                                   f"(Slurm's BlockSizes rule), got {size}")

    @property
    def base(self) -> int:
        """The planning base block size: the first of ``block_sizes``, else the smallest block."""
        return self.block_sizes[0] if self.block_sizes else min(len(b.hosts) for b in self.blocks)


# NCCL_SOCKET_IFNAME: prefixes separated by ',', the list optionally led by '^' (exclude) and
# '=' (exact names).
_IFNAME_RE = re.compile(r"\^?=?[A-Za-z0-9_.:-]{1,64}(,[A-Za-z0-9_.:-]{1,64}){0,63}")


FABRICS = ("infiniband", "roce", "slingshot", "efa", "omnipath", "ethernet")
# The fabrics whose adapters the `infiniband` section describes (NCCL's verbs transport).
VERBS_FABRICS = ("infiniband", "roce", "omnipath")


@dataclass
class Network:
    """The profile's ``network:``: the fabric, its InfiniBand ports and the switch or block topology."""

    # Default: infiniband when an `infiniband` section is given, else ethernet.
    fabric: Literal["infiniband", "roce", "slingshot", "efa", "omnipath", "ethernet"] | None = None
    infiniband: InfiniBand | None = None
    switches: SwitchTree = field(default_factory=SwitchTree)
    blocks: BlockTopology | None = None   # instead of `switches`: topology/block
    socket_ifname: str | None = None      # NCCL_SOCKET_IFNAME: eth, ^docker,lo, =ib0
    nccl_topo_file: str | None = None     # NCCL_TOPO_FILE: the node's topology XML (VMs, clouds)

    def __post_init__(self):
        if self.blocks is not None and (self.switches.leaves or self.switches.spines):
            raise Invalid("blocks", "expected a switch tree or blocks, not both (Slurm runs one topology "
                                    "plugin per cluster)")
        if self.socket_ifname is not None and not _IFNAME_RE.fullmatch(self.socket_ifname):
            raise Invalid("socket_ifname", "expected NCCL_SOCKET_IFNAME's syntax: interface prefixes separated "
                                           "by ',', optionally led by '^' (exclude) and '=' (exact names), "
                                           f"such as ib or ^docker,lo; got {self.socket_ifname!r}")
        if self.nccl_topo_file is not None:
            check_expandable("nccl_topo_file", self.nccl_topo_file)
            if not self.nccl_topo_file.startswith(("/", "$")):
                raise Invalid("nccl_topo_file", "expected an absolute path to NCCL's topology XML (ranks start "
                                                f"in other folders), got {self.nccl_topo_file!r}")
        if self.fabric is None:
            self.fabric = "infiniband" if self.infiniband else "ethernet"
        if self.infiniband and self.fabric not in VERBS_FABRICS:
            raise Invalid("infiniband", f"describes InfiniBand, RoCE or Omni-Path adapters; fabric "
                                        f"{self.fabric!r} has none (remove the section or fix the fabric)")
        if self.infiniband and self.infiniband.gid_index is not None and self.fabric != "roce":
            raise Invalid("infiniband.gid_index", f"applies to fabric roce only, not {self.fabric!r}")
