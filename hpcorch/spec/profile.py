"""Cluster profiles: node types, GPUs, partitions and their node groups, environment, defaults
(the network is in :mod:`.network`, requests and QOS in :mod:`.policy`)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpcorch.errors import ConfigError
from hpcorch.spec import catalog, units
from hpcorch.spec import constraint as constraint_syntax
from hpcorch.spec.environment import Environment
from hpcorch.spec.health import HealthPolicy
from hpcorch.spec.launch import Launch, check_directives
from hpcorch.spec.login import Login
from hpcorch.spec.network import Network, hosts_of
from hpcorch.spec.placement import BLOCKS_SINCE, check_no_debugging, parse_slurm_version, version_text
from hpcorch.spec.planning import Planning
from hpcorch.spec.policy import QOS, Requests, RequestsOverride
from hpcorch.spec.schema import (
    SLURM_MAX16,
    SLURM_MAX32,
    Invalid,
    build,
    check_account,
    check_at_most,
    check_name,
    check_positive,
)
from hpcorch.spec.yamlio import read_yaml

# NVIDIA's MIG profile names: compute slices "g", memory "gb", optionally "+me" (media engines).
MIG_PROFILE_RE = re.compile(r"[1-8]g\.\d{1,4}gb(\+me)?")
MAX_PEAK_TFLOPS = 1e6  # an exaFLOP/s per GPU: far above any
MAX_PRIORITY_TIER = 65533  # slurm.conf(5): PriorityTier 0-65533
MAX_GPUS = 1024  # per node: each becomes a device file and a GRES index
MAX_GPU_MEMORY_GB = 1_000_000
MAX_SMT = 8
MAX_MEMORY_MB = 2**40


@dataclass
class GPUs:
    """A node type's GPUs: how many, which model, GRES type, vendor, MIG slicing and memory."""

    count: int = 0
    model: str | None = None
    # The Slurm GRES type (Gres=gpu:TYPE:N): what `--gpus-per-node=TYPE:N` names. None: untyped.
    type: str | None = None
    vendor: Literal["nvidia", "amd"] = "nvidia"
    # A MIG profile such as 1g.10gb: the node's GPUs are split, and `count` counts the slices.
    mig: str | None = None
    memory_gb: int = 0
    # GPU-to-GPU links inside a node: nvlink (NVIDIA), xgmi (AMD Infinity Fabric), pcie, none.
    interconnect: Literal["nvlink", "xgmi", "pcie", "none"] = "none"
    peak_tflops: float = 0.0  # dense bf16 per GPU; the denominator of MFU
    # The Slurm GRES type name (Gres=gpu:a40:4); None: untyped GRES (Gres=gpu:4).
    type: str | None = None

    def __post_init__(self):
        check_positive(self, "count", "memory_gb", "peak_tflops", allow_zero=True)
        check_at_most(self, MAX_GPUS, "GPUs or MIG slices per node", "count")
        check_at_most(self, MAX_GPU_MEMORY_GB, "GB per GPU", "memory_gb")
        if self.peak_tflops > MAX_PEAK_TFLOPS:  # a typo that would overflow the planner's tokens/s
            raise Invalid("peak_tflops", f"expected at most {MAX_PEAK_TFLOPS:g} TFLOP/s per GPU, "
                                         f"got {self.peak_tflops:g}")
        check_name("model", self.model, "a GPU model name")
        check_name("type", self.type, "a GRES type name such as a100")
        if self.mig is not None:
            if not MIG_PROFILE_RE.fullmatch(self.mig):
                raise Invalid("mig", f"expected a MIG profile name such as 1g.10gb or 3g.40gb, got {self.mig!r}")
            if self.vendor != "nvidia":
                raise Invalid("mig", f"MIG is an NVIDIA feature; vendor is {self.vendor!r}")
            if not self.count:
                raise Invalid("count", "expected the number of MIG slices per node (mig is set)")

    @property
    def gres_type(self) -> str | None:
        """The GRES type Slurm knows these GPUs by: ``type``, else the MIG profile, else none."""
        return self.type or self.mig


@dataclass
class NodeType:
    """``cpus`` and ``memory_mb`` may be ``auto`` (this machine) in a local profile."""

    cpus: int | Literal["auto"]
    memory_mb: int | Literal["auto"]
    gpus: GPUs = field(default_factory=GPUs)
    features: list[str] = field(default_factory=list)
    arch: Literal["x86_64", "aarch64", "ppc64le"] = "x86_64"
    threads_per_core: int = 1  # SMT: `cpus` counts every hardware thread
    # How Slurm counts a CPU on these nodes (--cpus-per-task): "threads" (its default with
    # ThreadsPerCore>1), or "cores" (the node is configured with CPUs=cores, e.g. SMT off).
    slurm_cpus: Literal["threads", "cores"] = "threads"
    # Cores (CoreSpecCount) or CPU ids (CpuSpecList) Slurm keeps for system daemons: no job gets them.
    core_spec_count: int = 0
    cpu_spec_list: list[int] = field(default_factory=list)

    def __post_init__(self):
        # Remembered so that a Slurm profile can refuse them: 'auto' describes this machine.
        self.auto = [key for key in ("cpus", "memory_mb") if getattr(self, key) == "auto"]
        if self.cpus == "auto":
            self.cpus = os.cpu_count() or 1
        if self.memory_mb == "auto":
            self.memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        check_positive(self, "cpus", "memory_mb", "threads_per_core")
        check_at_most(self, SLURM_MAX16, "Slurm's CPUs= is 16-bit", "cpus", "core_spec_count")
        check_at_most(self, MAX_SMT, "hardware threads per core", "threads_per_core")
        check_at_most(self, MAX_MEMORY_MB, "MB per node, an exabyte", "memory_mb")
        if self.cpus % self.threads_per_core:
            raise Invalid("cpus", f"expected a multiple of threads_per_core ({self.threads_per_core}): cpus "
                                  f"counts every hardware thread, got {self.cpus}")
        check_positive(self, "core_spec_count", allow_zero=True)
        if self.core_spec_count and self.cpu_spec_list:
            raise Invalid("cpu_spec_list", "expected core_spec_count or cpu_spec_list, not both "
                                           "(Slurm refuses the pair)")
        for i, cpu in enumerate(self.cpu_spec_list):
            if isinstance(cpu, bool) or not 0 <= cpu < self.cpus:
                raise Invalid(f"cpu_spec_list[{i}]", f"expected a CPU id from 0 to {self.cpus - 1}, got {cpu!r}")
        if self.usable_cpus < 1:
            raise Invalid("core_spec_count", f"expected to leave jobs at least one CPU of {self.cpus}")

    @property
    def usable_cpus(self) -> int:
        """CPUs a job may ask for on one node, counted as Slurm counts them (``slurm_cpus``),
        less those CoreSpecCount/CpuSpecList keep for the system."""
        per_core = self.threads_per_core if self.slurm_cpus == "threads" else 1
        total = self.cpus if per_core == self.threads_per_core else self.cpus // self.threads_per_core
        # CpuSpecList names hardware threads; counted in cores, a core with one of them is lost.
        listed = -(-len(set(self.cpu_spec_list)) // (self.threads_per_core // per_core))
        reserved = self.core_spec_count * per_core + listed
        return total - reserved
        for i, feature in enumerate(self.features):
            check_name(f"features[{i}]", feature, "a feature name")


@dataclass
class NodeGroupSpec:
    """One entry of a partition's ``node_groups``: these hosts are of this node type."""

    nodes: str
    node_type: str

    def __post_init__(self):
        self.hosts = hosts_of("nodes", self.nodes)


@dataclass(frozen=True)
class NodeGroup:
    """A partition's hosts of one node type, resolved: see :meth:`ClusterProfile.groups_of`."""

    node_type: str
    spec: NodeType
    hosts: tuple[str, ...]


@dataclass
class Partition:
    """Its nodes are ``node_groups`` (several node types), or the one-group shorthand ``nodes``
    + ``node_type``. Code asks :meth:`ClusterProfile.groups_of` rather than reading either:
    ``node_type`` is None when ``node_groups`` is used."""

    name: str
    nodes: str | None = None
    node_type: str | None = None
    node_groups: list[NodeGroupSpec] = field(default_factory=list)
    max_time: str | int = "UNLIMITED"
    default: bool = False
    priority_tier: int = 1
    # Slurm's MinNodes/MaxNodes; min_time is a site rule (a job_submit plugin), not a slurm.conf key.
    min_nodes: int | None = None
    max_nodes: int | None = None
    min_time: str | int | None = None
    # The site routes jobs itself (by QOS or constraint): plans check against this partition,
    # scripts name no --partition.
    implicit: bool = False
    account: str | None = None            # for jobs here that name none (before defaults.account)
    qos: list[str] = field(default_factory=list)  # QOS allowed here; empty: any
    default_qos: str | None = None        # for jobs here that name none (before defaults.qos)
    partition_qos: str | None = None      # Slurm's partition QOS=: its limits hold for every job here
    requests: RequestsOverride = field(default_factory=RequestsOverride)
    extra_directives: list[str] = field(default_factory=list)  # e.g. ["--reservation=big"]

    def __post_init__(self):
        check_name("name", self.name, "a partition name")
        check_directives("extra_directives", self.extra_directives)
        check_account("account", self.account)
        for i, qos in enumerate(self.qos):
            check_name(f"qos[{i}]", qos, "a QOS name")
        check_name("default_qos", self.default_qos, "a QOS name")
        check_name("partition_qos", self.partition_qos, "a QOS name")
        if self.default_qos is not None and self.qos and self.default_qos not in self.qos:
            raise Invalid("default_qos", f"expected one of this partition's qos ({', '.join(self.qos)}), "
                                         f"got {self.default_qos!r}")
        shorthand = self.nodes is not None or self.node_type is not None
        if shorthand and self.node_groups:
            raise Invalid("node_groups", "expected either node_groups or nodes + node_type (one node group), not both")
        if not shorthand and not self.node_groups:
            raise Invalid("nodes", "missing; expected nodes + node_type, or node_groups")
        if shorthand:
            missing = "nodes" if self.nodes is None else "node_type" if self.node_type is None else None
            if missing:
                raise Invalid(missing, "missing; nodes and node_type go together (or use node_groups)")
            self.groups = [NodeGroupSpec(self.nodes, self.node_type)]
            self.groups[0].key = "nodes"  # where errors about the group point
        else:
            self.groups = list(self.node_groups)
            for j, group in enumerate(self.groups):
                group.key = f"node_groups[{j}].nodes"
        # The union, in order, once each: a host listed by two groups is one node.
        self.hosts = list(dict.fromkeys(h for group in self.groups for h in group.hosts))
        try:
            self.max_time_s = units.parse_time(self.max_time)
        except ValueError as exc:
            raise Invalid("max_time", str(exc)) from None
        check_positive(self, "priority_tier", "min_nodes", "max_nodes")
        check_at_most(self, SLURM_MAX32, "Slurm's node counts are 32-bit", "min_nodes", "max_nodes")
        if self.priority_tier > MAX_PRIORITY_TIER:
            raise Invalid("priority_tier", f"expected at most {MAX_PRIORITY_TIER} (Slurm's PriorityTier is "
                                           f"16 bits, its top values reserved), got {self.priority_tier}")
        if self.min_nodes and self.max_nodes and self.min_nodes > self.max_nodes:
            raise Invalid("min_nodes", f"expected at most max_nodes ({self.max_nodes}), got {self.min_nodes}")
        try:
            self.min_time_s = None if self.min_time is None else units.parse_time(self.min_time)
        except ValueError as exc:
            raise Invalid("min_time", str(exc)) from None


_RUN_ROOT_RE = re.compile(r"(~|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|[A-Za-z0-9_./+@:,=-])+")


@dataclass
class Defaults:
    """The profile's ``defaults:``: account, QoS, constraint and run root of jobs that name none."""

    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    # Where run directories go when no --run-dir is given: clusters want /scratch/$USER/..., not
    # the login node's home. `~` and $VARIABLES expand on the machine that plans the job.
    run_root: str | None = None

    def __post_init__(self):
        if self.run_root is not None and not _RUN_ROOT_RE.fullmatch(self.run_root):
            raise Invalid("run_root", "expected a path such as /scratch/$USER/runs (letters, "
                                      f"digits, _./+@:,=-, ~ and $NAME), got {self.run_root!r}")
        check_account("account", self.account)
        check_name("qos", self.qos, "a QOS name")
        check_constraint("constraint", self.constraint)


def check_constraint(key: str, value: str | None) -> None:
    """Slurm constraints combine feature names with & , | * [ ] ( ) and digits: see
    :mod:`hpcorch.spec.constraint`. Malformed ones are refused here, before sbatch would."""
    if value is None:
        return
    try:
        constraint_syntax.parse(value)
    except ValueError as exc:
        raise Invalid(key, f"expected a Slurm constraint such as 'h100&ib' ({exc}), got {value!r}") from None


@dataclass
class ClusterProfile:
    """A cluster profile: its scheduler, node types, partitions, network, environment and policies."""

    name: str
    scheduler: Literal["slurm", "local"]
    node_types: dict[str, NodeType]
    partitions: list[Partition]
    description: str = ""
    login: Login | None = None
    network: Network = field(default_factory=Network)
    environment: Environment = field(default_factory=Environment)
    defaults: Defaults = field(default_factory=Defaults)
    qos: dict[str, QOS] = field(default_factory=dict)
    requests: Requests = field(default_factory=Requests)
    launch: Launch = field(default_factory=Launch)            # how ranks start
    health: HealthPolicy = field(default_factory=HealthPolicy)  # pre-flight floors
    planning: Planning = field(default_factory=Planning)        # the memory/time planner's assumptions
    extra_directives: list[str] = field(default_factory=list)  # for every job
    # The cluster's Slurm release ("23.11"): which topology options sbatch has. None: a current one.
    slurm_version: str | None = None

    def __post_init__(self):
        check_name("name", self.name, "a profile name")
        check_directives("extra_directives", self.extra_directives)
        self.slurm_release = parse_slurm_version("slurm_version", self.slurm_version)
        check_no_debugging(self.environment.variables, site_tuned=self.environment.site_tuned)
        self._check_qos_names()
        for name, node_type in self.node_types.items():
            check_name(f"node_types.{name}", name, "a node type name")
            if self.scheduler == "slurm" and node_type.auto:
                raise Invalid(f"node_types.{name}.{node_type.auto[0]}",
                              "expected a number: 'auto' describes this machine, which only a "
                              "local profile may do")
        if not self.partitions:
            raise Invalid("partitions", "expected at least one partition")
        seen = set()
        for i, part in enumerate(self.partitions):
            if part.name in seen:
                raise Invalid(f"partitions[{i}].name", f"duplicate partition {part.name!r}")
            seen.add(part.name)
            for group in part.groups:
                if group.node_type not in self.node_types:
                    key = group.key.removesuffix("nodes") + "node_type"
                    raise Invalid(f"partitions[{i}].{key}",
                                  f"expected one of {sorted(self.node_types)}, got {group.node_type!r}")
        defaults = [p.name for p in self.partitions if p.default]
        if len(defaults) > 1:
            raise Invalid("partitions", f"expected at most one default partition, got {defaults}")
        self._type_of = self._host_types()
        self._check_topology_hosts()

    def _check_topology_hosts(self) -> None:
        """Leaves and blocks name nodes of the partitions; blocks need a Slurm that has them."""
        net = self.network
        groups = [(f"network.switches.leaves[{i}].nodes", leaf.hosts) for i, leaf in enumerate(net.switches.leaves)]
        if net.blocks is not None:
            groups += [(f"network.blocks.blocks[{i}].nodes", b.hosts) for i, b in enumerate(net.blocks.blocks)]
            if self.slurm_release is not None and self.slurm_release < BLOCKS_SINCE:
                raise Invalid("network.blocks", f"topology/block needs Slurm {version_text(BLOCKS_SINCE)} or "
                                                f"later; slurm_version is {self.slurm_version}")
        for key, hosts in groups:
            stray = [h for h in hosts if h not in self._type_of]
            if stray:
                raise Invalid(key,
                              f"expected nodes of this cluster's partitions, got unknown {units.brief_hosts(stray)}")

    def _check_qos_names(self) -> None:
        """QOS names used anywhere must be ones the profile lists (when it lists any)."""
        for name in self.qos:
            check_name(f"qos.{name}", name, "a QOS name")
        if not self.qos:
            return
        known = ", ".join(self.qos)
        used = [(f"partitions[{i}].qos[{j}]", q) for i, p in enumerate(self.partitions) for j, q in enumerate(p.qos)]
        used += [(f"partitions[{i}].default_qos", p.default_qos) for i, p in enumerate(self.partitions)]
        used += [(f"partitions[{i}].partition_qos", p.partition_qos) for i, p in enumerate(self.partitions)]
        used.append(("defaults.qos", self.defaults.qos))
        for key, name in used:
            if name is not None and name not in self.qos:
                raise Invalid(key, f"expected one of the profile's qos ({known}), got {name!r}")

    def requests_for(self, part: Partition) -> Requests:
        """The request style for jobs in ``part``: the profile's, with the partition's keys over it."""
        return part.requests.over(self.requests)

    def _host_types(self) -> dict[str, str]:
        """host -> node type, in order of first appearance; one pass over every partition.

        Slurm has one NodeName line per node: a host in partitions of two node types would need
        two, and slurmctld refuses the duplicate.
        """
        type_of: dict[str, str] = {}
        where: dict[str, int] = {}  # host -> the first partition that named it
        self._groups: dict[str, list[NodeGroup]] = {}
        for i, part in enumerate(self.partitions):
            for group in part.groups:
                clash = [h for h in group.hosts if type_of.get(h, group.node_type) != group.node_type]
                if clash:
                    other = self.partitions[where[clash[0]]]
                    raise Invalid(f"partitions[{i}].{group.key}",
                                  f"nodes {units.brief_hosts(clash)} are of node type {type_of[clash[0]]!r} in "
                                  f"partition {other.name!r}, not {group.node_type!r}; a node has one type")
                for host in group.hosts:
                    if host not in type_of:
                        type_of[host] = group.node_type
                        where[host] = i
            by_type: dict[str, list[str]] = {}  # two groups of one type in a partition are one group
            for group in part.groups:
                by_type.setdefault(group.node_type, []).extend(group.hosts)
            self._groups[part.name] = [NodeGroup(t, self.node_types[t], tuple(dict.fromkeys(hosts)))
                                       for t, hosts in by_type.items()]
        return type_of

    def groups_of(self, part: Partition) -> list[NodeGroup]:
        """The partition's node groups, one per node type, in the order the profile lists them:
        the one answer to "which node types and hosts does this partition have"."""
        return self._groups[part.name]

    def partition(self, name: str | None) -> Partition:
        """The named partition, or the default one (the first if none is marked)."""
        if name is None:
            return next((p for p in self.partitions if p.default), self.partitions[0])
        for part in self.partitions:
            if part.name == name:
                return part
        raise KeyError(name)

    def all_hosts(self) -> list[str]:
        """Every host of every partition, once, in order of first appearance."""
        return list(self._type_of)

    def has_host(self, host: str) -> bool:
        """Whether some partition lists ``host``."""
        return host in self._type_of

    def node_type_of(self, host: str) -> str:
        """The node type of ``host`` (KeyError if no partition has it)."""
        return self._type_of[host]

    def hosts_by_type(self) -> dict[str, list[str]]:
        """node type -> its hosts, in order of first appearance (types without hosts left out)."""
        out: dict[str, list[str]] = {}
        for host, type_name in self._type_of.items():
            out.setdefault(type_name, []).append(host)
        return out


def load_profile(name_or_path: str | os.PathLike | None = None) -> ClusterProfile:
    """Load and validate a cluster profile, by name (see :mod:`hpcorch.spec.catalog` for where
    names are looked up; default ``HPCORCH_PROFILE`` or ``local``) or path; raise ConfigError
    naming the file and key."""
    text = str(name_or_path) if name_or_path is not None else catalog.default_profile()
    if catalog.is_name(text):
        path = catalog.find("profiles", text)
        if path is None:
            raise ConfigError(f"profile {text!r}", "", catalog.unknown("profiles", text))
    else:
        path = Path(text)
        if not path.exists():
            raise ConfigError(text, "", "no such profile file")
    return build(ClusterProfile, read_yaml(path), str(path))


def list_profiles() -> list[str]:
    return list(catalog.names("profiles"))
