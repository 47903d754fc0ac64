"""A job's ``resources:``: nodes (a count or a range), GPUs, tasks, CPUs, memory and time, as
Slurm will be asked for them."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hpcorch.spec import units
from hpcorch.spec.launch import check_directives
from hpcorch.spec.noderange import parse_nodes, show
from hpcorch.spec.profile import check_constraint
from hpcorch.spec.schema import (
    CHECKED_AFTER,
    SLURM_MAX16,
    Invalid,
    check_account,
    check_at_most,
    check_name,
    check_positive,
)

MAX_MEMORY_MB = 2**40  # as a profile's node_types.*.memory_mb
MAX_TASKS_PER_NODE = 1024  # ranks per node: one per GPU or a few per CPU socket, far below this

# A typed GPU request as Slurm writes it: TYPE:COUNT (a40:4); TYPE is a GRES type name.
_TYPED_GPUS = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.+-]{0,127}):([0-9]{1,6})")


@dataclass
class Resources:
    """After validation ``gpus_per_node`` is an int and ``gpu_type`` a str or None, however
    the file wrote them (``gpus_per_node: a40:4`` or ``gpu_type: a40``), and ``nodes`` is an
    int, the most nodes the job asks for, with ``nodes_min`` the fewest (equal without a range:
    ``nodes: 4``; ``nodes: 2-4`` or ``{min: 2, max: 4}`` asks Slurm for ``--nodes=2-4``)."""

    nodes: int | str | dict[str, Any] = field(default=1, metadata={CHECKED_AFTER: True})  # parse_nodes
    gpus_per_node: int | str = 0       # 4, or "a40:4" for a GRES type
    tasks_per_node: int | None = None  # default: one task per GPU, or 1 without GPUs
    cpus_per_task: int = 1
    # per node, Slurm form (4000, 4000M, 64G); 0 = the whole node; None = Slurm default
    mem: str | int | None = None
    mem_per_gpu: str | int | None = None  # Slurm form; instead of mem
    gpu_type: str | None = None        # the Slurm GRES type name (a40)
    exclusive: bool | None = None      # None: as the profile's requests.exclusive says
    time: str | int = 60               # Slurm form: 90, 2:00:00, 1-00:00:00
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None         # hostlist of nodes never to run on
    extra_directives: list[str] = field(default_factory=list)  # after the profile's and partition's

    def __post_init__(self):
        self._parse_gpus()
        check_directives("extra_directives", self.extra_directives)
        self.nodes_min, self.nodes = parse_nodes(self.nodes)
        check_positive(self, "cpus_per_task", "tasks_per_node")
        check_positive(self, "gpus_per_node", allow_zero=True)
        # #SBATCH counts within Slurm's ranges; ranks also become per-node lists.
        check_at_most(self, SLURM_MAX16, "Slurm's 16-bit per-node counts", "cpus_per_task", "gpus_per_node")
        check_at_most(self, MAX_TASKS_PER_NODE, "ranks per node", "tasks_per_node")
        if self.gpu_type is not None and not self.gpus_per_node:
            raise Invalid(self.gpu_type_key, f"expected GPUs with GPU type {self.gpu_type!r} (gpus_per_node is 0)")
        if self.tasks_per_node is None:
            self.tasks_per_node = max(self.gpus_per_node, 1)
        for key, value in (("partition", self.partition), ("qos", self.qos)):
            check_name(key, value, f"a {key} name")
        check_account("account", self.account)
        check_constraint("constraint", self.constraint)
        try:
            self.time_s = units.parse_time(self.time)
        except ValueError as exc:
            raise Invalid("time", str(exc)) from None
        if self.time_s is None:
            raise Invalid("time", "expected a finite time limit; requeue and signals need one")
        try:
            self.mem_mb = None if self.mem is None else _memory_mb(self.mem, whole_node=True)
        except ValueError as exc:
            raise Invalid("mem", str(exc)) from None
        try:
            self.mem_per_gpu_mb = None if self.mem_per_gpu is None else _memory_mb(self.mem_per_gpu)
        except ValueError as exc:
            raise Invalid("mem_per_gpu", str(exc)) from None
        for key, mb in (("mem", self.mem_mb), ("mem_per_gpu", self.mem_per_gpu_mb)):
            if mb is not None and mb > MAX_MEMORY_MB:
                raise Invalid(key, f"expected at most {MAX_MEMORY_MB} MB (an exabyte), got {mb} MB")
        if self.mem_per_gpu is not None:
            # Slurm refuses --mem with --mem-per-gpu, and a per-GPU size needs GPUs to multiply.
            if self.mem is not None:
                raise Invalid("mem_per_gpu", "expected mem or mem_per_gpu, not both (Slurm refuses the pair)")
            if not self.gpus_per_node:
                raise Invalid("mem_per_gpu", "expected GPUs to go with it (gpus_per_node is 0); use mem")
        try:
            self.exclude_hosts = [] if self.exclude is None else units.expand_hostlist(self.exclude)
        except ValueError as exc:
            raise Invalid("exclude", str(exc)) from None

    def _parse_gpus(self) -> None:
        """Split ``TYPE:N`` into ``gpu_type`` and an int ``gpus_per_node``; remember which key
        named the type, so that plan errors about it blame the key the user wrote."""
        check_name("gpu_type", self.gpu_type, "a GPU type (Slurm GRES type name)")
        self.gpu_type_key = "gpu_type"
        if not isinstance(self.gpus_per_node, str):
            return
        m = _TYPED_GPUS.fullmatch(self.gpus_per_node)
        if not m:
            raise Invalid("gpus_per_node",
                          f"expected a GPU count or TYPE:COUNT such as a40:4, got {self.gpus_per_node!r}")
        gpu_type, self.gpus_per_node = m[1], int(m[2])
        if self.gpu_type is not None and self.gpu_type != gpu_type:
            raise Invalid("gpu_type", f"{self.gpu_type!r} disagrees with gpus_per_node's type {gpu_type!r}; give one")
        if self.gpu_type is None:
            self.gpu_type_key = "gpus_per_node"
        self.gpu_type = gpu_type

    @property
    def world_size(self) -> int:
        """The ranks on the most nodes the job asks for (``nodes``)."""
        return self.nodes * self.tasks_per_node

    @property
    def is_range(self) -> bool:
        """Whether the job asks for a node range (Slurm picks the count at each start)."""
        return self.nodes_min < self.nodes

    @property
    def nodes_needed(self) -> str:
        """How many nodes the job cannot start without, for messages: ``4``, or ``at least 2
        (2-4)`` for a range, which starts on what is usable."""
        return f"at least {self.nodes_min} ({self.nodes_directive})" if self.is_range else str(self.nodes)

    @property
    def nodes_directive(self) -> str:
        """The value of ``#SBATCH --nodes=``: ``"4"``, or ``"2-4"`` for a range."""
        return show(self.nodes_min, self.nodes)


def _memory_mb(value: str | int, whole_node: bool = False) -> int:
    """MB in a Slurm memory size; with ``whole_node``, 0 (Slurm's --mem=0) is allowed and means all."""
    if whole_node and not isinstance(value, bool) and str(value).strip() == "0":
        return 0
    return units.parse_memory_mb(value)
