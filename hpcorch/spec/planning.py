"""A profile's ``planning:`` section: what the memory and time planner assumes of this cluster.

Every key has a default that is honest for a current NVIDIA cluster; a site sets one when it
knows better (a measured MFU, its nodes' failure rate, its file system's write bandwidth, the
memory its CUDA stack takes before the first tensor). :mod:`hpcorch.plan.estimate` reads them.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpcorch.spec.schema import Invalid, check_positive


@dataclass
class Planning:
    """``mfu``: the model FLOPs utilisation assumed until the user's own completed runs on this
    profile calibrate it (0 < mfu <= 1). ``node_mtbf_hours``: mean time between failures of one
    node (hardware and software interruptions together), for the checkpoint interval.
    ``checkpoint_write_gbps``: GB/s one job's checkpoint is written at (the shared file system's
    share of it), when no earlier run measured the save time. ``cuda_overhead_gb``: memory each
    GPU loses before the first tensor and beside the tensors (CUDA context, cuBLAS and NCCL
    workspaces, allocator rounding); GPU jobs only."""

    mfu: float = 0.35
    node_mtbf_hours: float = 6000.0
    checkpoint_write_gbps: float = 2.0
    cuda_overhead_gb: float = 1.5

    def __post_init__(self):
        check_positive(self, "mfu", "node_mtbf_hours", "checkpoint_write_gbps")
        check_positive(self, "cuda_overhead_gb", allow_zero=True)
        if self.mfu > 1:
            raise Invalid("mfu", f"expected a fraction of the peak, 0 < mfu <= 1, got {self.mfu}")
        # Beyond these no cluster is, and the estimates' floats would overflow (an infinite save
        # time, a checkpoint interval of infinitely many steps): a typo, said as one.
        for name, low, high in LIMITS:
            value = getattr(self, name)
            if not low <= value <= high:
                raise Invalid(name, f"expected {low:g} to {high:g}, got {value:g}")


# (key, lowest, highest): the ranges a real cluster's figures fall in, many times over.
LIMITS = (("mfu", 0.001, 1.0), ("node_mtbf_hours", 0.01, 1e7), ("checkpoint_write_gbps", 0.001, 1e6),
          ("cuda_overhead_gb", 0.0, 1024.0))
