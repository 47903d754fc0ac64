"""The training step's node launcher on Slurm: one task per node imports torch and submitit once,
then forks the node's ranks, each of which runs submitit's task exactly as
``python -m submitit.core._submit FOLDER`` would as a task of its own.

``python -u -m hpcorch.batch.nodelaunch FOLDER --tasks-per-node N --output PATTERN --error PATTERN``
is what the batch script's training step runs (one task per node) when the plan says
``node_launcher`` (see :mod:`hpcorch.plan.plan`). Each forked rank is indistinguishable from the
per-rank task srun would have started:

- its Slurm identity: ``SLURM_PROCID`` (global rank, srun's block order: node i holds ranks
  i*N..i*N+N-1), ``SLURM_LOCALID``, ``SLURM_NTASKS``/``SLURM_STEP_NUM_TASKS``,
  tasks per node, its share of the node's CPUs; submitit's ``JobEnvironment`` and
  ``TorchDistributedEnvironment`` read those and give the same ranks and world size;
- its stdout/stderr in the files srun's ``--output``/``--error`` pattern names (``%t``: the
  global rank), so its log and result pickle are where they always were;
- the signals: Slurm signals every process of a step (proctrack walks the launcher's children
  too), so the ranks get ``--signal``'s requeue signal, a cancel's SIGTERM, once, from Slurm,
  as each task did; the launcher only keeps them from ending itself
  (:func:`hpcorch.train.forked.fork_and_wait` with ``forward=False``). A signal before the
  forks ends the launcher as it ended a rank without its handler yet; one that lands during
  the forks (milliseconds) reaches only the ranks that exist by then;
- its end: a rank that fails ends its siblings (:func:`hpcorch.train.spawn.wait_all`), and the
  launcher then ends the way that rank did: with its exit code, or killed by its signal (so
  srun's line reads ``Killed``, which :mod:`hpcorch.batch.failure` takes as a hard death of
  that node), and srun's ``--kill-on-bad-exit`` ends the other nodes.

Where forking is unsafe (:func:`hpcorch.train.forked.fork_hazard`) or ``HPCORCH_FORK_RANKS=0``
is in the job's environment, the launcher starts one ``python -u -m submitit.core._submit FOLDER``
per rank instead, with the same identities and logs.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import subprocess
import sys

from hpcorch.train.forked import ForkedRank, fork_and_wait, fork_hazard, preload
from hpcorch.train.spawn import Supervised, death_line, fork_ranks, forwarding, wait_all
from hpcorch.train.startup import StartupClock, set_process_start

log = logging.getLogger("hpcorch.batch.nodelaunch")

# What Slurm may signal a step with (its --signal, scancel --signal, a cancel's SIGTERM): the
# ranks get each from Slurm; the launcher must outlive them to report how they ended.
STEP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
GRACE_S = 30.0


def rank_identity(env: dict[str, str], local_rank: int, tasks_per_node: int) -> dict[str, str]:
    """The Slurm variables srun gives task ``local_rank`` of this node when it starts
    ``tasks_per_node`` tasks on each of the step's nodes (block distribution)."""
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    node = int(env.get("SLURM_NODEID") or 0)
    ntasks = nodes * tasks_per_node
    first = node * tasks_per_node
    cpus = int(env.get("SLURM_CPUS_PER_TASK") or tasks_per_node) // tasks_per_node
    per_node = f"{tasks_per_node}(x{nodes})" if nodes > 1 else str(tasks_per_node)
    return {"SLURM_PROCID": str(first + local_rank), "SLURM_LOCALID": str(local_rank),
            "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks),
            "SLURM_NTASKS_PER_NODE": str(tasks_per_node), "SLURM_TASKS_PER_NODE": per_node,
            "SLURM_STEP_TASKS_PER_NODE": per_node, "SLURM_CPUS_PER_TASK": str(max(cpus, 1)),
            "SLURM_GTIDS": ",".join(str(first + r) for r in range(tasks_per_node))}


def log_path(pattern: str, env: dict[str, str], rank: int) -> str:
    """srun's ``--output`` pattern for task ``rank``: ``%j`` job id, ``%A``/``%a`` array job and
    task, ``%t`` task (global rank), ``%%`` a percent sign (the ones hpcorch's patterns use)."""
    values = {"j": env.get("SLURM_JOB_ID", ""), "A": env.get("SLURM_ARRAY_JOB_ID", ""),
              "a": env.get("SLURM_ARRAY_TASK_ID", ""), "t": str(rank), "%": "%"}
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern) and pattern[i + 1] in values:
            out.append(values[pattern[i + 1]])
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def _core_order(cpu: int) -> tuple[int, int, int]:
    """Where ``cpu`` sits: (socket, core, cpu). Sorted by it, a core's hardware threads are
    neighbours, so a contiguous slice is whole cores on one socket, as Slurm binds a task."""
    topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
    try:
        with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
            return int(package.read()), int(core.read()), cpu
    except (OSError, ValueError):
        return 0, cpu, cpu


def _cpu_share(local_rank: int, tasks_per_node: int, launcher_cpus: int) -> set[int] | None:
    """This rank's slice of the launcher's CPUs, as srun binds a task to its own CPUs: only when
    the launcher holds exactly ``launcher_cpus`` (its step's ``--cpus-per-task``, the node's
    share for all its ranks); otherwise no binding is implied and none is made."""
    try:
        cpus = sorted(os.sched_getaffinity(0), key=_core_order)
    except (AttributeError, OSError):
        return None
    per = launcher_cpus // tasks_per_node
    if not per or len(cpus) != per * tasks_per_node:
        return None
    return set(cpus[local_rank * per:(local_rank + 1) * per])


def _launcher_cpus() -> int:
    """The CPUs srun gave the launcher's task (read before a rank's identity replaces it)."""
    try:
        return int(os.environ.get("SLURM_CPUS_PER_TASK") or 0)
    except ValueError:
        return 0


def _become_rank(args: argparse.Namespace, local_rank: int) -> dict[str, str]:
    """In the forked child: the rank's identity in os.environ, its logs on fds 1 and 2, its
    CPUs; returns the identity (also for a subprocess)."""
    share = _cpu_share(local_rank, args.tasks_per_node, _launcher_cpus())  # before the rank's own count
    identity = rank_identity(dict(os.environ), local_rank, args.tasks_per_node)
    os.environ.update(identity)
    os.environ["SLURM_TASK_PID"] = str(os.getpid())
    rank = int(identity["SLURM_PROCID"])
    for fd, pattern in ((1, args.output), (2, args.error)):
        path = log_path(pattern, os.environ, rank)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # --open-mode=append
        os.dup2(target, fd)
        os.close(target)
    if share:
        os.sched_setaffinity(0, share)
    return identity


def _forked_rank(args: argparse.Namespace, local_rank: int) -> int:
    """The forked child's body: become the rank, then run submitit's task in-process."""
    _become_rank(args, local_rank)
    _retitle([sys.executable, "-u", "-m", "submitit.core._submit", args.folder])
    from submitit.core.submission import process_job

    process_job(args.folder)
    return 0


def _retitle(words: list[str]) -> None:
    """Show this forked rank as the task it stands for (``ps``, ``/proc/PID/cmdline``, tools
    and people looking for ``submitit.core._submit`` processes): the command line is rewritten
    in place, within the launcher's own (longer) one; Linux only, and nothing on failure."""
    import ctypes

    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
        title = "\0".join(words).encode() + b"\0"
        if not start or len(title) > end - start:
            return
        ctypes.memmove(start, title.ljust(end - start, b"\0"), end - start)
    except (OSError, ValueError, IndexError):
        pass


def _subprocess_ranks(args: argparse.Namespace, procs: list[Supervised]) -> int:
    """The fallback: one ``python -m submitit.core._submit`` per rank (same identity, same logs)."""
    for local_rank in range(args.tasks_per_node):
        env = {**os.environ, **rank_identity(dict(os.environ), local_rank, args.tasks_per_node)}
        rank = int(env["SLURM_PROCID"])
        files = [open(log_path(p, env, rank), "ab") for p in (args.output, args.error)]  # noqa: SIM115
        try:
            procs.append(subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", args.folder],
                                          env=env, stdout=files[0], stderr=files[1],
                                          preexec_fn=_pin(local_rank, args.tasks_per_node)))
        finally:
            for f in files:
                f.close()
    with forwarding(procs, signals=STEP_SIGNALS, forward=False):
        return wait_all(procs, GRACE_S, on_failure=_report_death(args))


def _pin(local_rank: int, tasks_per_node: int):
    share = _cpu_share(local_rank, tasks_per_node, _launcher_cpus())
    return (lambda: os.sched_setaffinity(0, share)) if share else None


def _report_death(args: argparse.Namespace):
    """The ``on_failure`` of this node's ranks: a rank killed by a signal is one line in the batch
    log naming its global rank (srun's own line names only the launcher's task, the node)."""
    first = int(rank_identity(dict(os.environ), 0, args.tasks_per_node)["SLURM_PROCID"])
    node = os.environ.get("SLURMD_NODENAME", "?")

    def say(index: int, code: int) -> None:
        line = death_line(first + index, code, None)
        if line is not None:
            log.error("hpcorch: %s on %s", line, node)
    return say


def end_as(code: int, procs: list[Supervised]) -> int:
    """End this launcher the way its first failing rank ended: killed by the same signal when
    the rank was (srun then reports ``Killed``, ``Segmentation fault``: a hard death, see
    :mod:`hpcorch.batch.failure`), else return the code to exit with."""
    signum = code - 128
    if code > 128 and any(p.returncode == -signum for p in procs):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the rank's death, not a core of ours
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no disposition to reset
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    return code


def main(argv: list[str] | None = None) -> int:
    """Start this node's ranks and return the step's exit code for this node."""
    clock = StartupClock()
    parser = argparse.ArgumentParser(prog="python -m hpcorch.batch.nodelaunch")
    parser.add_argument("folder", help="submitit's job folder (its pickles)")
    parser.add_argument("--tasks-per-node", type=int, required=True)
    parser.add_argument("--output", required=True, help="srun's --output pattern of the per-rank logs")
    parser.add_argument("--error", required=True, help="srun's --error pattern of the per-rank logs")
    args = parser.parse_args(argv)
    _log_to_stderr()
    procs: list = []
    if not fork_ranks():
        log.info("hpcorch: %s=0: one interpreter per rank", "HPCORCH_FORK_RANKS")
        return end_as(_subprocess_ranks(args, procs), procs)
    set_process_start(clock.start)  # a rank's start-up counts from this launcher's
    preload()
    import submitit.core.submission  # noqa: F401  (process_job, cloudpickle, the pickled task's modules)
    import submitit.slurm.slurm  # noqa: F401

    import hpcorch.batch.task  # noqa: F401
    hazard = fork_hazard()
    if hazard is not None:
        log.warning("hpcorch: starting one interpreter per rank: forking them is unsafe (%s)", hazard)
        return end_as(_subprocess_ranks(args, procs), procs)
    clock.mark("imports")
    first = int(rank_identity(dict(os.environ), 0, args.tasks_per_node)["SLURM_PROCID"])
    log.info("hpcorch: node launcher %d on %s forks ranks %d-%d, %.1f s after its start", os.getpid(),
             os.environ.get("SLURMD_NODENAME", "?"), first, first + args.tasks_per_node - 1,
             sum(clock.phases().values()))
    children = [lambda r=r: _forked_rank(args, r) for r in range(args.tasks_per_node)]
    ranks: list[ForkedRank] = []
    return end_as(fork_and_wait(children, ranks, GRACE_S, signals=STEP_SIGNALS, forward=False,
                                on_failure=_report_death(args)), ranks)


def _log_to_stderr() -> None:
    """The launcher's few lines go to its stderr (the batch log) through its own handler: the
    root logger stays unconfigured, as in a fresh interpreter, for the ranks it forks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


if __name__ == "__main__":
    from hpcorch.errors import ConfigError

    try:
        sys.exit(main())
    except ConfigError as exc:  # HPCORCH_FORK_RANKS misspelt in the job's environment
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
