"""This node's pre-flight checks as a Python API (no torch unless ``allreduce``): what
``hpcorch health`` runs and the batch step runs before training."""
from __future__ import annotations

import os
from pathlib import Path

from hpcorch.errors import HpcorchError


def check(profile: str | None = None, run_dir: str | os.PathLike | None = None,
          root: str | os.PathLike | None = None, allreduce: bool = False):
    """Check this node against ``profile``'s floors and adapters: visible GPUs, InfiniBand ports,
    memory, disk and /dev/shm (and, with ``allreduce``, the all-reduce among the job's nodes, from
    inside a Slurm step). Returns the :class:`hpcorch.batch.health.report.NodeReport`, its notes
    first saying what the profile could not decide; HpcorchError for a bad ``root`` or an
    ``allreduce`` outside Slurm."""
    from hpcorch.batch.health.checks import node_name
    from hpcorch.batch.health.criteria import for_node
    from hpcorch.batch.health.preflight import run_preflight
    from hpcorch.spec.profile import load_profile

    if root is not None and not Path(root).is_dir():
        raise HpcorchError(f"--root: expected a directory, got {root!r}")
    if allreduce and "SLURM_PROCID" not in os.environ:
        raise HpcorchError("--allreduce: expected to run in a Slurm job step (srun --ntasks-per-node=1); "
                           "SLURM_PROCID is not set")
    criteria, notes = for_node(load_profile(profile), node_name())
    report = run_preflight(criteria, run_dir, root=root, allreduce=allreduce)
    report.notes[:0] = notes
    return report


def exit_code(report) -> int:
    """The exit status a report stands for: 0 when every check passed, 4 when one failed."""
    from hpcorch.batch.health.preflight import exit_code as code

    return code(report)
