"""Slurm configuration files generated from a cluster profile.

For any profile: ``slurm.conf`` (nodes, partitions, GRES, preemption, topology), ``gres.conf``
and ``topology.conf``. With :class:`LocalCluster` settings the same files describe a dev
cluster on one machine (all nodes on 127.0.0.1 with their own ports, private directories), plus
its ``cgroup.conf`` and ``slurmdbd.conf``. The dev cluster runs on exactly these files, so the
profile and the running cluster cannot disagree.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from hpcorch.spec.profile import ClusterProfile
from hpcorch.spec.units import compress_hostlist, format_time


@dataclass
class LocalCluster:
    """Where and how a dev cluster runs on this machine; every port and path is its own."""

    state_dir: Path
    port_base: int = 16800  # slurmctld = base, slurmdbd = base+1, mariadb = base+2, slurmd = base+100+i
    db_password: str = "hpcorch"
    hostname: str = ""

    def __post_init__(self):
        self.state_dir = Path(self.state_dir).absolute()
        self.hostname = self.hostname or socket.gethostname().split(".")[0]

    @property
    def ctld_port(self) -> int:
        return self.port_base

    @property
    def dbd_port(self) -> int:
        return self.port_base + 1

    @property
    def mysql_port(self) -> int:
        return self.port_base + 2

    def path(self, *parts: str) -> Path:
        return self.state_dir.joinpath(*parts)

    def node_root(self, node: str) -> Path:
        """The emulated node's hardware root: its GPU device files under ``dev/``, its
        InfiniBand ports under ``sys/class/infiniband/`` (``HPCORCH_SYSTEM_ROOT`` of its tasks)."""
        return self.path("nodes", node)

    @property
    def task_prolog(self) -> Path:
        return self.path("etc", "task_prolog.sh")


def _node_lines(profile: ClusterProfile, local: LocalCluster | None) -> list[str]:
    lines, port = [], (local.port_base + 100) if local else None
    for type_name, hosts in profile.hosts_by_type().items():
        nt = profile.node_types[type_name]
        cores = nt.slurm_cpus == "cores"  # CPUs= the cores: Slurm then counts a CPU as a core
        attrs = [f"NodeName={compress_hostlist(hosts)}", f"CPUs={nt.cpus // nt.threads_per_core if cores else nt.cpus}",
                 f"RealMemory={nt.memory_mb}"]
        if nt.threads_per_core > 1 and not cores:  # Slurm's default is 1; CPUs then counts hardware threads
            attrs.append(f"ThreadsPerCore={nt.threads_per_core}")
        if nt.core_spec_count:  # cores kept for system daemons
            attrs.append(f"CoreSpecCount={nt.core_spec_count}")
        if nt.cpu_spec_list:
            attrs.append(f"CpuSpecList={','.join(str(c) for c in sorted(set(nt.cpu_spec_list)))}")
        if nt.gpus.count:
            # The GRES type is what `--gpus-per-node=TYPE:N` names (an untyped request matches
            # typed GRES too); for MIG, a substring of the slice's NVML profile (1g.10gb).
            gtype = nt.gpus.gres_type
            attrs.append(f"Gres=gpu:{gtype}:{nt.gpus.count}" if gtype else f"Gres=gpu:{nt.gpus.count}")
        if nt.features:
            attrs.append(f"Feature={','.join(nt.features)}")
        if local:
            attrs += [f"NodeHostname={local.hostname}", "NodeAddr=127.0.0.1",
                      f"Port={port}-{port + len(hosts) - 1}" if len(hosts) > 1 else f"Port={port}"]
            port += len(hosts)
        lines.append(" ".join(attrs + ["State=UNKNOWN"]))
    return lines


def _partition_lines(profile: ClusterProfile) -> list[str]:
    lowest = min(p.priority_tier for p in profile.partitions)
    default = profile.partition(None)
    lines = []
    for part in profile.partitions:
        attrs = [f"PartitionName={part.name}", f"Nodes={compress_hostlist(part.hosts)}",
                 f"Default={'YES' if part is default else 'NO'}",
                 f"MaxTime={format_time(part.max_time_s) if part.max_time_s else 'UNLIMITED'}",
                 f"PriorityTier={part.priority_tier}"]
        attrs += [f"{key}={value}" for key, value in (("MinNodes", part.min_nodes), ("MaxNodes", part.max_nodes))
                  if value is not None]
        if part.qos:  # the QOS a job here may name (sacctmgr defines them: qos_commands)
            attrs.append(f"AllowQos={','.join(part.qos)}")
        if part.partition_qos:  # the partition's own QOS: its limits hold for every job here
            attrs.append(f"QOS={part.partition_qos}")
        # Jobs in the lowest tier are preempted (signal, grace, requeue) by higher tiers.
        attrs.append("GraceTime=30 PreemptMode=REQUEUE" if part.priority_tier == lowest else "PreemptMode=OFF")
        lines.append(" ".join(attrs + ["State=UP"]))
    return lines


def slurm_conf(profile: ClusterProfile, local: LocalCluster | None = None) -> str:
    """``slurm.conf`` for ``profile``; with ``local``, for a dev cluster on this machine."""
    has_gpus = any(nt.gpus.count for nt in profile.node_types.values())
    has_tree = bool(profile.network.switches.leaves)
    min_mem_per_cpu = min(nt.memory_mb // nt.cpus for nt in profile.node_types.values())
    out = [f"# slurm.conf for profile '{profile.name}', generated by hpcorch. Do not edit: "
           "edit the profile and generate again.", f"ClusterName={profile.name}"]
    if local:
        s = local
        out += [
            f"SlurmctldHost={s.hostname}(127.0.0.1)",
            f"SlurmctldPort={s.ctld_port}",
            "SlurmUser=root",
            f"StateSaveLocation={s.path('ctld')}",
            f"SlurmdSpoolDir={s.path('spool', '%n')}",
            f"SlurmctldPidFile={s.path('run', 'slurmctld.pid')}",
            f"SlurmdPidFile={s.path('run', 'slurmd-%n.pid')}",
            f"SlurmctldLogFile={s.path('log', 'slurmctld.log')}",
            f"SlurmdLogFile={s.path('log', 'slurmd-%n.log')}",
            # Several slurmd on one host, with more CPUs than the host has; no cgroups here.
            "SlurmdParameters=config_overrides",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={s.dbd_port}",
            # Every task learns its emulated node's hardware root (see task_prolog).
            f"TaskProlog={s.task_prolog}",
        ]
    out += [
        "AuthType=auth/munge",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"DefMemPerCPU={min_mem_per_cpu}",
        "MpiDefault=none",
        # An admin's DOWN must stick while slurmd lives (2 would silently undo it).
        "ReturnToService=1",
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        "SlurmctldParameters=preempt_send_user_signal",
        "JobRequeue=1",
        "MinJobAge=300",
        "KillWait=30",
    ]
    if has_gpus:
        out.append("GresTypes=gpu")
    if has_tree:
        out.append("TopologyPlugin=topology/tree")
    if profile.qos:
        # QOS limits hold only where they are enforced; GPU limits need GPUs counted as a TRES.
        out.append("AccountingStorageEnforce=associations,limits,qos")
        if has_gpus:
            out.append("AccountingStorageTRES=gres/gpu")
    out += _node_lines(profile, local) + _partition_lines(profile)
    return "\n".join(out) + "\n"


def qos_commands(profile: ClusterProfile) -> str:
    """The profile's QOS as ``sacctmgr`` commands (a shell script): each QOS with its limits,
    and the accounts allowed to use it, so a cluster (the dev cluster too) enforces what the
    plan checks. MinTRESPerJob/MaxTRESPerJob/MaxTRESPerNode/MaxWall as sacctmgr(1) spells them;
    ``min_time`` has no Slurm equivalent (a job_submit plugin's rule) and is left as a comment."""
    out = ["#!/bin/sh", f"# QOS of profile '{profile.name}', generated by hpcorch: run once where sacctmgr "
           "reaches the cluster's slurmdbd.", "set -e"]
    for name, q in profile.qos.items():
        per_job = [f"node={q.max_nodes}"] * (q.max_nodes is not None) + [f"gres/gpu={q.max_gpus}"] * (
            q.max_gpus is not None)
        limits = [f"MaxWall={format_time(q.max_time_s)}"] * (q.max_time_s is not None)
        limits += [f"MaxTRESPerJob={','.join(per_job)}"] * bool(per_job)
        limits += [f"MinTRESPerJob=node={q.min_nodes}"] * (q.min_nodes is not None)
        limits += [f"MaxTRESPerNode=gres/gpu={q.max_gpus_per_node}"] * (q.max_gpus_per_node is not None)
        out.append(f"sacctmgr -i add qos {name}")
        if limits:
            out.append(f"sacctmgr -i modify qos where name={name} set {' '.join(limits)}")
        if q.min_time_s is not None:
            out.append(f"# {name}: min_time {format_time(q.min_time_s)} is a site rule, not a QOS limit")
        for account in q.accounts:
            out.append(f"sacctmgr -i modify account where name={account} set qos+={name}")
    return "\n".join(out) + "\n"


# How slurmd finds each vendor's GPUs (gres.conf AutoDetect), and their device files.
_AUTODETECT = {"nvidia": "nvml", "amd": "rsmi"}
_AMD_RENDER_BASE = 128  # /dev/dri/renderD128 is the first GPU's render node


def _device_files(vendor: str, count: int) -> str:
    if vendor == "amd":
        return f"/dev/dri/renderD[{_AMD_RENDER_BASE}-{_AMD_RENDER_BASE + count - 1}]"
    return f"/dev/nvidia[0-{count - 1}]"


def gres_conf(profile: ClusterProfile, local: LocalCluster | None = None) -> str:
    """``gres.conf``: one entry per node type with GPUs. NVIDIA GPUs are found with NVML, AMD
    GPUs with ROCm SMI; both are also listed by device file, so the files Slurm confines a job
    to are stated here. MIG slices are not device files: NVML finds them (AutoDetect=nvml).
    With ``local``, the dev cluster's fake NVIDIA devices, and no autodetection at all."""
    gpu_types = [(t, hosts, profile.node_types[t]) for t, hosts in profile.hosts_by_type().items()
                 if profile.node_types[t].gpus.count]
    detects = {_AUTODETECT[nt.gpus.vendor] for _, _, nt in gpu_types}
    out = ["# gres.conf generated by hpcorch"]
    if local:
        out.append("AutoDetect=off")
    elif len(detects) <= 1:  # one mechanism for every node: one global line
        out.append(f"AutoDetect={detects.pop() if detects else 'nvml'}")
    for type_name, hosts, nt in gpu_types:
        nodes = compress_hostlist(hosts)
        if not local and len(detects) > 1:
            out.append(f"NodeName={nodes} AutoDetect={_AUTODETECT[nt.gpus.vendor]}")
        gtype = f" Type={nt.gpus.gres_type}" if nt.gpus.gres_type else ""
        if local:
            # Slurm sets CUDA_VISIBLE_DEVICES only for distinct character devices: the dev
            # cluster's are made with mknod (major 195, as NVIDIA's), whatever the profile's vendor.
            # Each node has its own files, so one node's GPU can be hidden (a fault) alone.
            out += [f"NodeName={host} Name=gpu{gtype} File={local.node_root(host)}/dev/nvidia[0-{nt.gpus.count - 1}]"
                    for host in hosts]
        elif nt.gpus.mig:
            out.append(f"# {type_name}: {nt.gpus.count} MIG slices {nt.gpus.mig} per node, found by NVML "
                       f"(MIG devices cannot be listed with File=)")
        else:
            out.append(f"NodeName={nodes} Name=gpu{gtype} File={_device_files(nt.gpus.vendor, nt.gpus.count)}")
    return "\n".join(out) + "\n"


def topology_conf(profile: ClusterProfile) -> str:
    tree = profile.network.switches
    out = ["# topology.conf generated by hpcorch from the profile's switch tree"]
    out += [f"SwitchName={leaf.name} Nodes={compress_hostlist(leaf.hosts)}" for leaf in tree.leaves]
    # Switches= takes a hostlist expression: 32 leaves stay one short field, not 32 names.
    out += [f"SwitchName={spine.name} Switches={compress_hostlist(spine.switches)}" for spine in tree.spines]
    return "\n".join(out) + "\n"


def task_prolog(local: LocalCluster) -> str:
    """The dev cluster's TaskProlog: slurmstepd runs it before each task and exports what it
    prints, so every task on an emulated node reads that node's hardware (see
    :mod:`hpcorch.batch.health.checks`), not the one machine's."""
    return "\n".join([
        "#!/bin/sh",
        "# Generated by hpcorch for a dev cluster: each task's system root is its emulated node's.",
        f'[ -n "$SLURMD_NODENAME" ] && echo "export HPCORCH_SYSTEM_ROOT={local.path("nodes")}/$SLURMD_NODENAME"',
        "exit 0",
    ]) + "\n"


def cgroup_conf() -> str:
    # slurmd 22.05 always loads a cgroup plugin; on a host without systemd it only survives v1
    # without automount (nothing is constrained: the dev cluster uses proctrack/linuxproc).
    return "CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n"


def slurmdbd_conf(local: LocalCluster) -> str:
    s = local
    return "\n".join([
        "# slurmdbd.conf generated by hpcorch for a dev cluster",
        "AuthType=auth/munge",
        "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={s.dbd_port}", "SlurmUser=root",
        f"PidFile={s.path('run', 'slurmdbd.pid')}", f"LogFile={s.path('log', 'slurmdbd.log')}",
        "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={s.mysql_port}",
        "StorageUser=slurm", f"StoragePass={s.db_password}", "StorageLoc=slurm_acct_db",
    ]) + "\n"


def write_configs(profile: ClusterProfile, out_dir: Path, local: LocalCluster | None = None) -> list[Path]:
    """Write every file this profile needs into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"slurm.conf": slurm_conf(profile, local)}
    if any(nt.gpus.count for nt in profile.node_types.values()):
        files["gres.conf"] = gres_conf(profile, local)
    if profile.network.switches.leaves:
        files["topology.conf"] = topology_conf(profile)
    if profile.qos:
        files["qos.sh"] = qos_commands(profile)
    if local:
        files["cgroup.conf"] = cgroup_conf()
        files["slurmdbd.conf"] = slurmdbd_conf(local)
        files["task_prolog.sh"] = task_prolog(local)
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text)
        if name == "slurmdbd.conf":
            path.chmod(0o600)  # slurmdbd refuses a config others can read
        elif name in ("task_prolog.sh", "qos.sh"):
            path.chmod(0o755)  # run by slurmstepd as the job's user
        written.append(path)
    return written
