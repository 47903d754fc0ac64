"""The training step with a node launcher (:mod:`hpcorch.batch.nodelaunch`): one srun task per
node, which imports torch once and forks the node's ranks, instead of one task per rank."""
from __future__ import annotations

import os

from hpcorch.errors import PlanError

ENV = "HPCORCH_NODE_LAUNCHER"


def asked() -> bool:
    """``HPCORCH_NODE_LAUNCHER=1`` when planning asks for the node launcher; unset, empty or 0:
    one srun task per rank (the default while the launcher is new). Another value is an error
    naming the variable, so that "yes" is not silently "no"."""
    value = os.environ.get(ENV, "").strip()
    if value not in ("", "0", "1"):
        raise PlanError(ENV, "", f"expected 0 (one srun task per rank) or 1 (a node launcher), got {value!r}")
    return value == "1"


def step_options(res, gpu_request: str | None) -> list[str]:
    """The node launcher step's srun options: one task per node holding the CPUs of all the
    node's ranks, and their GPUs where the site asks GPUs per task (``--gpus-per-task``: each
    rank then picks its device by local rank, as it does among a node's GPUs)."""
    options = ["--ntasks-per-node=1", f"--cpus-per-task={res.tasks_per_node * res.cpus_per_task}"]
    if gpu_request and gpu_request.startswith("--gpus-per-task="):
        typed = gpu_request.split("=", 1)[1].rpartition(":")[0]
        options.append(f"--gpus-per-task={typed + ':' if typed else ''}{res.gpus_per_node}")
    return options
