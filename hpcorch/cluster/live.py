"""The live cluster: running Slurm's commands through a *runner* and gathering their parsed
output into a :class:`LiveCluster` (what ``profile discover`` and ``profile diff`` read).

A runner is any ``runner(*argv) -> stdout`` that raises :class:`~hpcorch.cluster.slurm.SlurmError`;
:func:`subprocess_runner` (:meth:`Slurm.ask`) is this login node's, and the tests
answer from recorded outputs.
"""
from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcorch.cluster.slurm import Slurm, SlurmError
from hpcorch.cluster.slurmtext import (
    ASSOC_FORMAT,
    QOS_FORMAT,
    Assoc,
    Node,
    Qos,
    SlurmPartition,
    Topology,
    expand_hosts,
    parse_assoc,
    parse_config,
    parse_nodes,
    parse_partitions,
    parse_qos,
    parse_topology,
)

Runner = Callable[..., str]  # runner("scontrol", "-o", "show", "node") -> stdout, or SlurmError


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
    """A runner for :func:`collect`: :meth:`Slurm.ask` with ``env`` added to this process's
    environment (``{"SLURM_CONF": ...}`` picks a cluster) and ``timeout_s``; it raises
    :class:`SlurmError` as one line when the command is missing, hangs or fails."""
    return Slurm(env=env, timeout_s=timeout_s).ask


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


def partition_hosts(part: SlurmPartition, live: LiveCluster) -> list[str]:
    """A partition's hosts; ``Nodes=ALL`` is every node scontrol shows."""
    if part.nodes is not None and part.nodes.upper() == "ALL":
        return [n.name for n in live.nodes]
    return expand_hosts(part.nodes, f"partition {part.name} Nodes=")
