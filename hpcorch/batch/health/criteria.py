"""What a pre-flight check demands of a node, as explicit command-line options.

:func:`for_job` builds the criteria of a job from its profile (``health:`` floors, the
InfiniBand adapters) and its resources (GPUs per node); :meth:`Criteria.to_args` spells them
as the options of ``python -m hpcorch.batch.health preflight``, so the dry run shows exactly what is
checked, and :meth:`Criteria.from_args` reads them back on the node (no profile needed there).
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from hpcorch.errors import HpcorchError
from hpcorch.spec.health import MAX_TIMEOUT_S, HealthPolicy, JobHealth

if TYPE_CHECKING:
    import argparse

_PORT_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.+-]{0,127}):([0-9]{1,3})")


class BadCriteria(HpcorchError):
    """A pre-flight option is malformed: one line naming the option (exit 2)."""


@dataclass(frozen=True)
class Criteria:
    """``gpus``: visible GPUs expected on the node (0: no GPU check); ``ib_ports``: ``HCA:PORT``
    entries that must be ACTIVE, at ``ib_rate_gbps`` (Gb/s; 0: rate not checked); floors in GB
    (decimal) and GB/s; ``timeout_s``: the whole pre-flight's deadline."""

    gpus: int = 0
    gpu_vendor: str = "nvidia"
    ib_ports: tuple[str, ...] = ()
    ib_rate_gbps: int = 0
    # The floors' defaults are the profile's (one statement of them: spec.health.HealthPolicy).
    min_free_disk_gb: float = HealthPolicy.min_free_disk_gb
    min_shm_gb: float = HealthPolicy.min_shm_gb
    min_free_memory_gb: float = HealthPolicy.min_free_memory_gb
    min_gpu_free_fraction: float = HealthPolicy.min_gpu_free_fraction
    min_busbw_gbps: float = HealthPolicy.min_busbw_gbps
    allreduce_mb: int = HealthPolicy.allreduce_mb
    iterations: int = HealthPolicy.iterations
    timeout_s: int = HealthPolicy.timeout_s

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value < math.inf:
                raise BadCriteria(f"{_option(f.name)}: expected a non-negative finite number, got {value}")
        if self.gpu_vendor not in ("nvidia", "amd"):
            raise BadCriteria(f"--gpu-vendor: expected nvidia or amd, got {self.gpu_vendor!r}")
        for entry in self.ib_ports:
            if not _PORT_RE.fullmatch(entry):
                raise BadCriteria(f"--ib-ports: expected HCA:PORT entries such as mlx5_0:1, got {entry!r}")
        if not 1 <= self.timeout_s <= MAX_TIMEOUT_S:
            raise BadCriteria(f"--timeout-s: expected 1 to {MAX_TIMEOUT_S} seconds, got {self.timeout_s}")
        if self.min_gpu_free_fraction > 1:
            raise BadCriteria(f"--min-gpu-free-fraction: expected at most 1, got {self.min_gpu_free_fraction}")
        if not self.allreduce_mb or not self.iterations:
            raise BadCriteria("--allreduce-mb, --iterations: expected positive numbers")

    def ports(self) -> list[tuple[str, int]]:
        """(HCA, port number) pairs to check."""
        return [(hca, int(port)) for hca, port in (entry.split(":") for entry in self.ib_ports)]

    def to_args(self) -> list[str]:
        """Every criterion as ``--option value`` words, in a fixed order (``--ib-ports`` only
        when there are ports); :meth:`from_args` reads them back to an equal Criteria."""
        args = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "ib_ports":
                if value:
                    args += [_option(f.name), ",".join(value)]
                continue
            args += [_option(f.name), repr(value) if isinstance(value, float) else str(value)]
        return args

    @classmethod
    def from_args(cls, args: list[str]) -> Criteria:
        """The inverse of :meth:`to_args`; a bad option raises :class:`BadCriteria`. Options not
        given keep their defaults."""
        namespace, rest = parser().parse_known_args(args)
        if rest:
            raise BadCriteria(f"{rest[0]}: unknown pre-flight option")
        return from_namespace(namespace)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.cache
def _parser_class() -> type:
    # argparse is imported only by the pre-flight itself: a plan only writes its options.
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):  # argparse would print usage and exit; we want one line
            raise BadCriteria(message)

    return _Parser


def __getattr__(name: str):
    if name == "_Parser":
        return _parser_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The criteria's options on ``p`` (the pre-flight entry adds its own beside them)."""
    defaults = Criteria()
    for f in fields(Criteria):
        kind = {"ib_ports": str, "gpu_vendor": str}.get(f.name, type(getattr(defaults, f.name)))
        p.add_argument(_option(f.name), dest=f.name, default=None, type=str, metavar=kind.__name__.upper())


def parser() -> argparse.ArgumentParser:
    p = _parser_class()(prog="hpcorch.batch.health", add_help=False, allow_abbrev=False)
    add_arguments(p)
    return p


def from_namespace(namespace: argparse.Namespace) -> Criteria:
    """Criteria from parsed options (strings, or None for "default"), each converted with a
    one-line error naming the option."""
    defaults, values = Criteria(), {}
    for f in fields(Criteria):
        text = getattr(namespace, f.name, None)
        if text is None:
            continue
        if f.name == "ib_ports":
            values[f.name] = tuple(e for e in text.split(",") if e)
            continue
        kind = type(getattr(defaults, f.name))
        try:
            values[f.name] = kind(text)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, "a word")
            raise BadCriteria(f"{_option(f.name)}: expected {what}, got {text!r}") from None
    return Criteria(**values)


def _resources_and_health(job):
    """(Resources, JobHealth, node groups or None) of a Plan, a JobSpec or bare Resources."""
    if hasattr(job, "landing_groups"):  # a Plan
        return job.job.resources, job.job.health, job.landing_groups
    if hasattr(job, "resources"):  # a JobSpec
        return job.resources, job.health, None
    return job, JobHealth(), None


def for_job(profile, job) -> Criteria:
    """The criteria of ``job`` (a Plan, a JobSpec or Resources) on ``profile``: the job's GPUs
    per node, every HCA port of the profile at its link rate (if ``health.check_ib_rate``), the
    profile's floors, and the job's deadline if it gives one."""
    res, job_health, groups = _resources_and_health(job)
    if groups is None:
        groups = profile.groups_of(profile.partition(res.partition))
    vendors = {g.spec.gpus.vendor for g in groups if g.spec.gpus.count}
    floors = _of_profile(profile)
    if job_health.timeout_s:
        floors["timeout_s"] = job_health.timeout_s
    return Criteria(gpus=res.gpus_per_node, gpu_vendor=vendors.pop() if len(vendors) == 1 else "nvidia", **floors)


def _of_profile(profile) -> dict:
    """The criteria the profile alone decides: its adapters' ports and rate, and its floors."""
    ib, policy = profile.network.infiniband, profile.health
    return dict(ib_ports=tuple(f"{hca}:{p}" for hca in ib.hcas for p in range(1, ib.ports + 1)) if ib else (),
                ib_rate_gbps=ib.link_rate_gbps if ib and policy.check_ib_rate else 0,
                min_free_disk_gb=policy.min_free_disk_gb, min_shm_gb=policy.min_shm_gb,
                min_free_memory_gb=policy.min_free_memory_gb, min_gpu_free_fraction=policy.min_gpu_free_fraction,
                min_busbw_gbps=policy.min_busbw_gbps, allreduce_mb=policy.allreduce_mb,
                iterations=policy.iterations, timeout_s=policy.timeout_s)


def for_node(profile, node: str, env=None) -> tuple[Criteria, list[str]]:
    """The criteria of ``hpcorch health`` on ``node`` (no job): its node type's GPUs (Slurm's
    allocation on this node, ``SLURM_GPUS_ON_NODE``, when inside a job), and the profile's
    adapters and floors. Returns the criteria and notes on how the GPU count was chosen."""
    env = os.environ if env is None else env
    notes, vendor, gpus = [], "nvidia", 0
    if profile.has_host(node):
        spec = profile.node_types[profile.node_type_of(node)].gpus
        gpus, vendor = spec.count, spec.vendor
        notes.append(f"expected GPUs: {gpus} (node type {profile.node_type_of(node)!r})")
    elif len({nt.gpus.count for nt in profile.node_types.values()}) == 1:
        spec = next(iter(profile.node_types.values())).gpus
        gpus, vendor = spec.count, spec.vendor
        notes.append(f"expected GPUs: {gpus} (profile {profile.name!r} has one GPU count; {node} is not listed)")
    else:
        notes.append(f"expected GPUs unknown: {node} is not in profile {profile.name!r}; GPU count not checked")
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        gpus = int(env["SLURM_GPUS_ON_NODE"])
        notes.append(f"expected GPUs: {gpus} (this Slurm job's allocation, SLURM_GPUS_ON_NODE)")
    return Criteria(gpus=gpus, gpu_vendor=vendor, **_of_profile(profile)), notes


MODULE = "hpcorch.batch.health"


def preflight_args(plan) -> list[str] | None:
    """The words after ``python -m`` for a plan's pre-flight step (``hpcorch.batch.health preflight
    --run-dir RUN <criteria>``), or None when the job (else its profile) turned the check off."""
    wanted = plan.job.health.preflight
    if not (plan.profile.health.preflight if wanted is None else wanted):
        return None
    return [MODULE, "preflight", "--run-dir", str(plan.run.root), *for_job(plan.profile, plan).to_args()]
