"""Cluster profiles: partitions, node types, GPUs, InfiniBand, switch tree, environment."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import catalog, units
from ..errors import ConfigError
from .yamlio import read_yaml
from .schema import Invalid, build, check_env_names, check_name, check_positive



@dataclass
class Login:
    """Where a remote client reaches the cluster's login node over SSH."""

    host: str
    user: str | None = None
    port: int = 22
    key_file: str | None = None

    def __post_init__(self):
        check_name("host", self.host, "a host name")
        check_name("user", self.user, "a user name")
        if not 0 < self.port < 65536:
            raise Invalid("port", f"expected a TCP port 1-65535, got {self.port}")


@dataclass
class GPUs:
    count: int = 0
    model: str | None = None
    memory_gb: int = 0
    interconnect: Literal["nvlink", "pcie", "none"] = "none"
    peak_tflops: float = 0.0  # dense bf16 per GPU; the denominator of MFU

    def __post_init__(self):
        check_positive(self, "count", "memory_gb", "peak_tflops", allow_zero=True)
        check_name("model", self.model, "a GPU model name")


@dataclass
class NodeType:
    """``cpus`` and ``memory_mb`` may be ``auto`` (this machine) in a local profile."""

    cpus: int | Literal["auto"]
    memory_mb: int | Literal["auto"]
    gpus: GPUs = field(default_factory=GPUs)
    features: list[str] = field(default_factory=list)

    def __post_init__(self):
        # Remembered so that a Slurm profile can refuse them: 'auto' describes this machine.
        self.auto = [key for key in ("cpus", "memory_mb") if getattr(self, key) == "auto"]
        if self.cpus == "auto":
            self.cpus = os.cpu_count() or 1
        if self.memory_mb == "auto":
            self.memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        check_positive(self, "cpus", "memory_mb")
        for i, feature in enumerate(self.features):
            check_name(f"features[{i}]", feature, "a feature name")


def _hosts(field: str, expr: str) -> list[str]:
    try:
        return units.expand_hostlist(expr)
    except ValueError as exc:
        raise Invalid(field, str(exc)) from None


@dataclass
class Partition:
    name: str
    nodes: str
    node_type: str
    max_time: str | int = "UNLIMITED"
    default: bool = False
    priority_tier: int = 1

    def __post_init__(self):
        check_name("name", self.name, "a partition name")
        self.hosts = _hosts("nodes", self.nodes)
        try:
            self.max_time_s = units.parse_time(self.max_time)
        except ValueError as exc:
            raise Invalid("max_time", str(exc)) from None
        check_positive(self, "priority_tier")


@dataclass
class InfiniBand:
    hcas: list[str]
    ports: int = 1
    link_rate_gbps: int = 200
    rails_per_node: int = 1

    def __post_init__(self):
        for i, hca in enumerate(self.hcas):
            check_name(f"hcas[{i}]", hca, "an HCA name such as mlx5_0")
        check_positive(self, "ports", "link_rate_gbps", "rails_per_node")
        if self.rails_per_node > len(self.hcas) * self.ports:
            raise Invalid("rails_per_node", f"expected at most {len(self.hcas) * self.ports} "
                                            f"(HCAs x ports), got {self.rails_per_node}")


@dataclass
class LeafSwitch:
    name: str
    nodes: str

    def __post_init__(self):
        check_name("name", self.name, "a switch name")
        self.hosts = _hosts("nodes", self.nodes)


@dataclass
class SpineSwitch:
    name: str
    switches: list[str]

    def __post_init__(self):
        check_name("name", self.name, "a switch name")


@dataclass
class SwitchTree:
    leaves: list[LeafSwitch] = field(default_factory=list)
    spines: list[SpineSwitch] = field(default_factory=list)

    def __post_init__(self):
        leaf_names = {leaf.name for leaf in self.leaves}
        for i, spine in enumerate(self.spines):
            for j, child in enumerate(spine.switches):
                if child not in leaf_names and child not in {s.name for s in self.spines}:
                    raise Invalid(f"spines[{i}].switches[{j}]", f"expected a known switch, got {child!r}")


@dataclass
class Network:
    infiniband: InfiniBand | None = None
    switches: SwitchTree = field(default_factory=SwitchTree)


# A module name never starts with '-': `module load --help` would run an option, not a module.
_MODULE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-/@]{0,199}")


@dataclass
class Environment:
    """Set up in every job script: ``module load`` lines, then exported variables."""

    modules: list[str] = field(default_factory=list)
    variables: dict[str, str | int | float] = field(default_factory=dict)

    def __post_init__(self):
        for i, module in enumerate(self.modules):
            if not _MODULE_RE.fullmatch(module):
                raise Invalid(f"modules[{i}]", f"expected a module name such as cuda/12.4, got {module!r}")
        check_env_names(self.variables)


_RUN_ROOT_RE = re.compile(r"(~|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|[A-Za-z0-9_./+@:,=-])+")


@dataclass
class Defaults:
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
        check_name("account", self.account, "an account name")
        check_name("qos", self.qos, "a QOS name")
        check_constraint("constraint", self.constraint)


def check_constraint(key: str, value: str | None) -> None:
    """Slurm constraints combine feature names with & | , [ ] * and digits; nothing else."""
    if value is not None and (not value or not all(c.isalnum() or c in "_.-&|,[]*:" for c in value)):
        raise Invalid(key, f"expected a Slurm constraint such as 'h100&ib', got {value!r}")


@dataclass
class ClusterProfile:
    name: str
    scheduler: Literal["slurm", "local"]
    node_types: dict[str, NodeType]
    partitions: list[Partition]
    description: str = ""
    login: Login | None = None
    network: Network = field(default_factory=Network)
    environment: Environment = field(default_factory=Environment)
    defaults: Defaults = field(default_factory=Defaults)

    def __post_init__(self):
        check_name("name", self.name, "a profile name")
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
            if part.node_type not in self.node_types:
                raise Invalid(f"partitions[{i}].node_type",
                              f"expected one of {sorted(self.node_types)}, got {part.node_type!r}")
        defaults = [p.name for p in self.partitions if p.default]
        if len(defaults) > 1:
            raise Invalid("partitions", f"expected at most one default partition, got {defaults}")
        known = set(self.all_hosts())
        for i, leaf in enumerate(self.network.switches.leaves):
            stray = [h for h in leaf.hosts if h not in known]
            if stray:
                raise Invalid(f"network.switches.leaves[{i}].nodes",
                              f"expected nodes of this cluster's partitions, got unknown {stray[:3]}")

    def partition(self, name: str | None) -> Partition:
        """The named partition, or the default one (the first if none is marked)."""
        if name is None:
            return next((p for p in self.partitions if p.default), self.partitions[0])
        for part in self.partitions:
            if part.name == name:
                return part
        raise KeyError(name)

    def all_hosts(self) -> list[str]:
        hosts: dict[str, None] = {}
        for part in self.partitions:
            hosts.update(dict.fromkeys(part.hosts))
        return list(hosts)

    def node_type_of(self, host: str) -> str:
        return next(p.node_type for p in self.partitions if host in p.hosts)


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
