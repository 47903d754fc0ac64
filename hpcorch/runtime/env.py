"""The environment a user's program starts with (``program:`` jobs): torchrun's variables, set
as torchrun sets them, and hpcorch's own ``HPCORCH_*``. One builder serves every launcher (the
per-rank task on Slurm and under submitit's local controller, and ``hpcorch train``), so the
program cannot tell them apart. No torch, no submitit: the program may import it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

# hpcorch's own variables (documented in README, "Bring your own trainer").
RUN_DIR = "HPCORCH_RUN_DIR"                # the run directory (metrics, events, logs)
CHECKPOINT_DIR = "HPCORCH_CHECKPOINT_DIR"  # where the program should keep its checkpoints
ATTEMPT = "HPCORCH_ATTEMPT"                # 0 on the first start, +1 on every requeue
RESTART_CAUSE = "HPCORCH_RESTART_CAUSE"    # none, preemption, timeout, node_failure, failure
DEADLINE = "HPCORCH_DEADLINE"              # epoch seconds when the allocation ends ("" unknown)
TIME_LEFT = "HPCORCH_TIME_LEFT_S"          # seconds left at the program's start ("" unknown)
STOP_SIGNAL = "HPCORCH_STOP_SIGNAL"        # the signal's name (USR2): "stop now, you will come back"
REQUEUE_EXIT = "HPCORCH_REQUEUE_EXIT"      # the exit code that says "checkpointed, resume me" (3)
REQUEUE_MARKER = "HPCORCH_REQUEUE_MARKER"  # or create this file, then exit with any code
JOB_ID = "HPCORCH_JOB_ID"
PLANNED_STEPS = "HPCORCH_STEPS"            # program.steps ("" when not given)

# ``module:function`` runs through this (no hpcorch needed in the program's interpreter).
_CALL = ("import importlib, sys; m, f = sys.argv[1].split(':'); sys.argv = [m] + sys.argv[2:]; "
         "r = getattr(importlib.import_module(m), f)(); sys.exit(r if isinstance(r, int) else 0)")


@dataclass
class Rendezvous:
    """Where this process sits: torchrun's numbers for one rank (``direct``) or one node's agent."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    nodes: int
    master_addr: str
    master_port: int


def torchrun_env(rv: Rendezvous, run_id: str) -> dict[str, str]:
    """What torchrun (``torch.distributed.run``, static rendezvous, no restarts) sets for a worker.
    ``TORCHELASTIC_RESTART_COUNT`` counts torchrun's in-place restarts of the worker group: a
    requeue is a new allocation and a new group, so it is 0 (the requeue count is HPCORCH_ATTEMPT)."""
    env = {"RANK": rv.rank, "LOCAL_RANK": rv.local_rank, "WORLD_SIZE": rv.world_size,
           "LOCAL_WORLD_SIZE": rv.local_world_size, "GROUP_RANK": rv.node_rank, "GROUP_WORLD_SIZE": rv.nodes,
           "ROLE_RANK": rv.rank, "ROLE_WORLD_SIZE": rv.world_size, "ROLE_NAME": "default",
           "MASTER_ADDR": rv.master_addr, "MASTER_PORT": rv.master_port,
           "TORCHELASTIC_RESTART_COUNT": 0, "TORCHELASTIC_MAX_RESTARTS": 0, "TORCHELASTIC_RUN_ID": run_id,
           "TORCHELASTIC_USE_AGENT_STORE": "False"}
    out = {k: str(v) for k, v in env.items()}
    if rv.local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        out["OMP_NUM_THREADS"] = "1"  # torchrun's default, so that N processes do not oversubscribe
    return out


def hpcorch_env(run_dir: str, checkpoint_dir: str, attempt: int, cause: str, deadline: float | None,
                stop_signal: str, job_id: str, steps: int | None, now: float) -> dict[str, str]:
    """hpcorch's own variables (see the names above)."""
    from hpcorch.protocol import CHECKPOINTED

    return {RUN_DIR: run_dir, CHECKPOINT_DIR: checkpoint_dir, ATTEMPT: str(attempt), RESTART_CAUSE: cause,
            DEADLINE: f"{deadline:.0f}" if deadline else "", TIME_LEFT: f"{deadline - now:.0f}" if deadline else "",
            STOP_SIGNAL: stop_signal, REQUEUE_EXIT: str(CHECKPOINTED),
            REQUEUE_MARKER: requeue_marker(run_dir, attempt), JOB_ID: job_id,
            PLANNED_STEPS: "" if steps is None else str(steps)}


def requeue_marker(run_dir: str, attempt: int) -> str:
    """The marker file of ``attempt`` (per attempt: an earlier attempt's never counts)."""
    return os.path.join(run_dir, "exits", f"attempt-{attempt}", "requeue-me")


def program_argv(program, rv: Rendezvous | None = None, python: str | None = None,
                 env: dict | None = None) -> list[str]:
    """The argv that runs ``program`` (a ProgramSpec), its ``$NAME``s expanded against ``env``
    (the program's environment: ``$HPCORCH_CHECKPOINT_DIR``; there is no shell). With
    ``launcher: torchrun``, ``rv`` (this node's rendezvous) makes it ``python -m torch.distributed.run ...``."""
    from hpcorch.spec.expand import expand_with

    python = python or sys.executable
    words = [expand_with(w, env if env is not None else os.environ) for w in program.args]
    if program.command is not None:
        command = [expand_with(w, env if env is not None else os.environ) for w in program.command]
        inner, script_mode = [*command, *words], True
    elif ":" in program.module:
        inner, script_mode = ["-c", _CALL, program.module, *words], False
    else:
        inner, script_mode = ["-m", program.module, *words], False
    if program.launcher != "torchrun":
        return inner if script_mode else [python, "-u", *inner]
    run = [python, "-m", "torch.distributed.run", f"--nnodes={rv.nodes}", f"--nproc-per-node={rv.local_world_size}",
           f"--node-rank={rv.node_rank}", f"--master-addr={rv.master_addr}", f"--master-port={rv.master_port}",
           "--max-restarts=0"]
    if script_mode:  # torchrun runs a script with python, or any executable with --no-python
        return [*run, "--no-python", *inner]
    return [*run, "--no-python", python, "-u", *inner]


def module_importable(module: str, code_dir: str | None) -> bool:
    """Whether ``module`` would import with ``code_dir`` first on the path (its parent packages
    are imported to find it; nothing else is)."""
    import importlib.util

    sys.path.insert(0, code_dir or os.getcwd())
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    finally:
        sys.path.pop(0)
