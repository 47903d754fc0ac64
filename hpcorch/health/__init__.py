"""Pre-flight health checks: is this node (and are these nodes together) fit to train?

``check_node(criteria, run_dir, root) -> NodeReport`` runs the local checks (GPUs, InfiniBand
ports, memory, disk, /dev/shm) without torch; ``python -m hpcorch.health preflight`` is the
Slurm step that adds the all-reduce among the nodes and writes each node's report; ``hpcorch
health`` runs the local checks from the command line. ``criteria.for_job(profile, plan)``
builds what a job's nodes must pass, as explicit options (``Criteria.to_args()``).
"""
from .checks import check_node
from .criteria import Criteria, for_job, for_node
from .report import Check, NodeReport

__all__ = ["Check", "Criteria", "NodeReport", "check_node", "for_job", "for_node"]
