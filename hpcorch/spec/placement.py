"""Where a job's nodes should sit in the fabric (``placement:`` in a job), the profile's Slurm
version, and the NCCL variables that are for debugging only.

``placement.switches`` asks Slurm's topology/tree for at most that many leaf switches
(``#SBATCH --switches=K@WAIT``): ``auto`` (the default) lets the plan compute the fewest the job
can fit in, ``off`` asks nothing, a number asks exactly that. ``max_wait`` is how long the job
may stay pending for such an allocation before Slurm places it anywhere (sbatch reads it in
``--time``'s forms; sites may cap it with ``SchedulerParameters=max_switch_wait``). On a
profile with a block topology, ``auto`` becomes ``--segment`` where the Slurm supports it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from hpcorch.spec import units
from hpcorch.spec.schema import Invalid

# sbatch --segment (topology/block) exists from Slurm 24.05; the block plugin from 23.11.
SEGMENT_SINCE = (24, 5)
BLOCKS_SINCE = (23, 11)
_VERSION_RE = re.compile(r"(\d{2})\.(\d{2})(?:\.\d{1,3})?")


def parse_slurm_version(field: str, text: str | None) -> tuple[int, int] | None:
    """``"23.11"`` or ``"24.05.3"`` -> ``(23, 11)``; None stays None (a current Slurm)."""
    if text is None:
        return None
    m = _VERSION_RE.fullmatch(text)
    if not m:
        raise Invalid(field, f"expected a Slurm release such as 23.11 or 24.05.3, got {text!r}")
    return int(m[1]), int(m[2])


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]:02d}"


@dataclass
class Placement:
    """``switches``: ``auto``, ``off`` or a leaf-switch count; ``max_wait``: a Slurm time."""

    # YAML 1.1 reads an unquoted `off` as false: it means "off" here, as the user wrote it.
    switches: Literal["auto", "off"] | int | bool = "auto"
    max_wait: str | int = "10:00"

    def __post_init__(self):
        if self.switches is False:
            self.switches = "off"
        elif self.switches is True:
            raise Invalid("switches", "expected auto, off or a leaf-switch count, got true")
        elif isinstance(self.switches, int) and self.switches < 1:
            raise Invalid("switches", f"expected auto, off or a positive leaf-switch count, got {self.switches}")
        try:
            self.max_wait_s = units.parse_time(self.max_wait)
        except ValueError as exc:
            raise Invalid("max_wait", str(exc)) from None
        if self.max_wait_s is None:
            raise Invalid("max_wait", "expected a finite wait such as 10:00 (a job pending forever for "
                                      "fewer switches is never what is meant)")

    @property
    def max_wait_text(self) -> str:
        """``max_wait`` as sbatch reads it after ``@``: ``HH:MM:SS`` or ``D-HH:MM:SS``."""
        return units.format_time(self.max_wait_s)


# NCCL's environment documentation ("Environment Variables", section "Debugging"): these
# "should not be used in production nor retained in scripts, or only as workaround, and removed
# as soon as the issue is resolved". The logging variables are in NCCL's "System configuration"
# section, but hpcorch treats them the same way: logging is asked for per submission
# (`submit --nccl-debug`), so a profile never makes every job of a cluster verbose.
NCCL_LOGGING = ("NCCL_DEBUG", "NCCL_DEBUG_FILE", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_TIMESTAMP_FORMAT",
                "NCCL_DEBUG_TIMESTAMP_LEVELS")
NCCL_DEBUGGING = frozenset(NCCL_LOGGING + (
    "NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL", "NCCL_P2P_DIRECT_DISABLE", "NCCL_SHM_DISABLE", "NCCL_BUFFSIZE",
    "NCCL_NTHREADS", "NCCL_MAX_NCHANNELS", "NCCL_MIN_NCHANNELS", "NCCL_MAX_NRINGS", "NCCL_MIN_NRINGS",
    "NCCL_CHECKS_DISABLE", "NCCL_CHECK_POINTERS", "NCCL_CHECK_MODE", "NCCL_LAUNCH_MODE", "NCCL_IB_DISABLE",
    "NCCL_IB_AR_THRESHOLD", "NCCL_IB_OOO_RQ", "NCCL_IB_QPS_PER_CONNECTION", "NCCL_IB_SPLIT_DATA_ON_QPS",
    "NCCL_IB_CUDA_SUPPORT", "NCCL_IB_PCI_RELAXED_ORDERING", "NCCL_IB_ADAPTIVE_ROUTING", "NCCL_IB_ECE_ENABLE",
    "NCCL_MEM_SYNC_DOMAIN", "NCCL_CUMEM_ENABLE", "NCCL_CUMEM_HOST_ENABLE", "NCCL_NET_GDR_LEVEL",
    "NCCL_IB_GDR_LEVEL", "NCCL_NET_GDR_C2C", "NCCL_NET_GDR_READ", "NCCL_GDRCOPY_ENABLE",
    "NCCL_NET_SHARED_BUFFERS", "NCCL_NET_SHARED_COMMS", "NCCL_SINGLE_RING_THRESHOLD", "NCCL_LL_THRESHOLD",
    "NCCL_TREE_THRESHOLD", "NCCL_ALGO", "NCCL_PROTO", "NCCL_NVB_DISABLE", "NCCL_PXN_DISABLE",
    "NCCL_P2P_PXN_LEVEL", "NCCL_PXN_C2C", "NCCL_RUNTIME_CONNECT", "NCCL_GRAPH_REGISTER", "NCCL_LOCAL_REGISTER",
    "NCCL_LEGACY_CUDA_REGISTER", "NCCL_WIN_ENABLE", "NCCL_SET_STACK_SIZE", "NCCL_GRAPH_MIXING_SUPPORT",
    "NCCL_DMABUF_ENABLE", "NCCL_P2P_NET_CHUNKSIZE", "NCCL_P2P_LL_THRESHOLD", "NCCL_ALLOC_P2P_NET_LL_BUFFERS",
    "NCCL_COMM_BLOCKING", "NCCL_CGA_CLUSTER_SIZE", "NCCL_MAX_CTAS", "NCCL_MIN_CTAS", "NCCL_NVLS_ENABLE",
    "NCCL_IB_MERGE_NICS", "NCCL_MNNVL_ENABLE",
))
NCCL_DEBUG_LEVELS = ("VERSION", "WARN", "INFO", "TRACE")


def check_no_debugging(variables: dict, key: str = "environment.variables", site_tuned=()) -> None:
    """A profile's variables hold system configuration only: a debugging one is refused with
    where it belongs instead, unless the profile names it in ``site_tuned`` (a value the site
    documents for its fabric, such as a tuned NCCL_BUFFSIZE). Logging (NCCL_DEBUG*) is always
    per submission."""
    for name in variables:
        if name in NCCL_LOGGING or (name in NCCL_DEBUGGING and name not in site_tuned):
            hint = "" if name in NCCL_LOGGING else (f"; a value the site documents may stay here when "
                                                    f"environment.site_tuned lists {name}")
            raise Invalid(f"{key}.{name}", "is one of NCCL's debugging variables, which NCCL says not to keep "
                                           "in production scripts; set it in a job's environment (the plan "
                                           f"warns) or, for NCCL_DEBUG, use `submit --nccl-debug`{hint}")


def debugging_in(variables: dict) -> list[str]:
    """The NCCL debugging variables among ``variables`` (a job's environment), in order."""
    return [name for name in variables if name in NCCL_DEBUGGING]
