"""Pre-flight health settings: the profile's floors (``health:``) and the job's switch.

The profile says what a healthy node of this cluster reaches (free disk, /dev/shm, memory,
the InfiniBand rate, the bus bandwidth of a short all-reduce); the job only says whether to
check at all and may shorten or lengthen the deadline. :mod:`hpcorch.batch.health.criteria` turns
both, with the job's resources, into the explicit options of the pre-flight step.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpcorch.spec.schema import Invalid, check_positive

# One Slurm step per job start: a deadline beyond ten minutes would hide a hang, not a check.
MAX_TIMEOUT_S = 600


def _check_timeout(key: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_TIMEOUT_S:
        raise Invalid(key, f"expected 1 to {MAX_TIMEOUT_S} seconds, got {value}")


@dataclass
class HealthPolicy:
    """A profile's ``health:`` section: the floors every node must reach before training.

    ``min_busbw_gbps`` is in GB/s (gigabytes, as nccl-tests' busbw column); 0 measures the
    bus bandwidth and reports it without a floor. ``min_gpu_free_fraction``: the share of each
    GPU's memory that must be free before the job starts (a foreign process holding a GPU).
    """

    min_busbw_gbps: float = 0.0
    allreduce_mb: int = 16
    iterations: int = 5
    min_free_disk_gb: float = 1.0
    min_shm_gb: float = 0.25
    min_free_memory_gb: float = 1.0
    min_gpu_free_fraction: float = 0.9
    check_ib_rate: bool = True
    timeout_s: int = 30
    quarantine_hours: float = 24.0
    # false: no job on this profile runs the pre-flight unless it sets health.preflight: true
    # (a site where the check cannot work need not say so on every job).
    preflight: bool = True

    def __post_init__(self):
        check_positive(self, "min_busbw_gbps", "min_free_disk_gb", "min_shm_gb", "min_free_memory_gb",
                       "quarantine_hours", allow_zero=True)
        check_positive(self, "allreduce_mb", "iterations")
        if self.allreduce_mb > 4096:
            raise Invalid("allreduce_mb", f"expected at most 4096 MiB (a short check), got {self.allreduce_mb}")
        if self.iterations > 1000:
            raise Invalid("iterations", f"expected at most 1000, got {self.iterations}")
        if not 0 <= self.min_gpu_free_fraction <= 1:
            raise Invalid("min_gpu_free_fraction", f"expected a fraction from 0 to 1, got {self.min_gpu_free_fraction}")
        _check_timeout("timeout_s", self.timeout_s)


@dataclass
class JobHealth:
    """A job's ``health:`` section: ``preflight: false`` skips the check for this job (unset:
    the profile's ``health.preflight``); ``timeout_s`` replaces the profile's deadline."""

    preflight: bool | None = None
    timeout_s: int | None = None

    def __post_init__(self):
        _check_timeout("timeout_s", self.timeout_s)
