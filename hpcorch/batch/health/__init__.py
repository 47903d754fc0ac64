"""Pre-flight health checks: is this node (and are these nodes together) fit to train?

``check_node(criteria, run_dir, root) -> NodeReport`` runs the local checks (GPUs, InfiniBand
ports, memory, disk, /dev/shm) without torch; ``python -m hpcorch.batch.health preflight`` is the
Slurm step that adds the all-reduce among the nodes and writes each node's report; ``hpcorch
health`` runs the local checks from the command line. ``criteria.for_job(profile, plan)``
builds what a job's nodes must pass, as explicit options (``Criteria.to_args()``).
"""
import importlib

# Imported on first use: `hpcorch` registers the `health` command on every start, and the
# checks (psutil, the health spec) are not needed unless a check runs.
_HOME = {"check_node": "checks", "Criteria": "criteria", "for_job": "criteria", "for_node": "criteria",
         "Check": "report", "NodeReport": "report"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
