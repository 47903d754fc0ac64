"""The training step with a node launcher (:mod:`hpcorch.batch.nodelaunch`): one srun task per
node, which imports torch once and forks the node's ranks, instead of one task per rank."""
from __future__ import annotations

from hpcorch.errors import PlanError
from hpcorch.util.envswitch import on_unless_zero

ENV = "HPCORCH_NODE_LAUNCHER"


# srun options that place or bind each task (its CPUs, GPUs, its slot on the node): with one
# task per node they would bind the node's ranks together, so such a step keeps a task per rank.
PER_TASK_OPTIONS = ("--cpu-bind", "--gpu-bind", "--distribution", "-m", "--mem-bind", "--ntasks-per-gpu",
                    "--ntasks-per-core", "--ntasks-per-socket", "--gpus-per-task", "--cpus-per-gpu",
                    "--mem-per-gpu", "--tres-per-task", "--accel-bind")


def asked() -> bool:
    """Whether planning asks for the node launcher: yes unless ``HPCORCH_NODE_LAUNCHER=0`` (one
    srun task per rank, each importing torch itself, as before the launcher). Another value than
    0, 1 or empty is an error naming the variable, so that "no" is never silently "yes"."""
    return on_unless_zero(ENV, "one srun task per rank", "a node launcher", PlanError)


def _binds(option: str) -> bool:
    name, _, value = option.partition("=")
    return name in PER_TASK_OPTIONS and value.strip().lower() != "none"  # =none binds nothing


def chosen(job, options: list[str], notes: list[str]) -> bool:
    """Whether the training step of ``job`` runs a node launcher: hpcorch's own trainer, asked
    (:func:`asked`), and no srun option or extra directive among ``options`` binds tasks one by
    one (sbatch exports its own as the variables srun reads; then a note says why each rank
    stays a task of its own). A ``program:`` runs as it always did. (SLURM_* variables cannot be
    set through a profile's or job's environment: spec refuses them.)"""
    if job.program is not None or not asked():
        return False
    binding = [o for o in options if _binds(o)]
    if binding:
        notes.append(f"one srun task per rank, not a node launcher: {' '.join(binding)} place each task "
                     "(with one task per node all its ranks would share the first one's CPUs or GPU)")
    return not binding


def step_options(res, gpu_request: str | None) -> list[str]:
    """The node launcher step's srun options: one task per node holding the CPUs of all the
    node's ranks, and their GPUs where the site asks GPUs per task (``--gpus-per-task``: each
    rank then picks its device by local rank, as it does among a node's GPUs)."""
    options = ["--ntasks-per-node=1", f"--cpus-per-task={res.tasks_per_node * res.cpus_per_task}"]
    if gpu_request and gpu_request.startswith("--gpus-per-task="):
        typed = gpu_request.split("=", 1)[1].rpartition(":")[0]
        options.append(f"--gpus-per-task={typed + ':' if typed else ''}{res.gpus_per_node}")
    return options
