"""Whether jobs run: scheduler states batched over many jobs, a local job's controller, and
whether the holder of a run directory's lease is alive (asked of its scheduler)."""
from __future__ import annotations

from hpcorch.cluster.slurm import FINAL_STATES, Slurm, SlurmError
from hpcorch.state.registry import Entry
from hpcorch.state.rundir import Lease, RunDir

ENDED_STATES = FINAL_STATES | {"STOPPED"}  # STOPPED: a local job whose controller is gone


def clusters(entries: list[Entry]) -> list[tuple[Slurm, list[str]]]:
    """The Slurm jobs of ``entries`` grouped by cluster (their ``SLURM_CONF``), each group with
    the :class:`Slurm` that asks its cluster: one call per cluster, not one per job."""
    by_conf: dict[str | None, list[str]] = {}
    for e in entries:
        by_conf.setdefault(e.slurm_conf, []).append(e.job_id)
    return [(Slurm(env={"SLURM_CONF": conf} if conf else None), ids) for conf, ids in by_conf.items()]


def slurm_states(entries: list[Entry]) -> dict[str, str]:
    """States of many Slurm jobs, batched per cluster (SLURM_CONF) as :meth:`Slurm.states`
    decides them; PENDING carries its reason. If the controller cannot be asked, accounting
    alone answers, and a job it does not know is UNKNOWN."""
    states: dict[str, str] = {}
    for slurm, ids in clusters(entries):
        try:
            found = slurm.states(ids)
        except SlurmError:
            try:
                found = {j: (state, "") for j, state in slurm.sacct_states(ids).items()}
            except SlurmError:
                continue
        for job_id, (state, reason) in found.items():
            states[job_id] = f"{state} ({reason})" if state == "PENDING" and reason not in ("", "None") else state
    return states


def process_alive(pid: int, started: float = 0.0) -> bool:
    """Whether ``pid`` runs and (when ``started`` is known) is the same process that started
    then, not a later one that reused the number."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not started or abs(proc.create_time() - started) < 1.0
    except psutil.Error:
        return False


def local_controller_alive(entry: Entry) -> bool:
    """Whether a local job's controller still runs: its pid, checked against the start time
    recorded at submission (in the registry, or the run directory's lease). Once the lease
    names another holder, that one is the live writer (it could only take the lease after
    this job ended): a pid reused since is not this job."""
    if entry.started:
        return process_alive(int(entry.job_id), entry.started)
    lease = RunDir(entry.run_dir).lease()
    if lease is None:
        return process_alive(int(entry.job_id))
    if (lease.scheduler, lease.job_id) != (entry.scheduler, entry.job_id):
        return False
    return process_alive(int(entry.job_id), lease.started)


def local_state(entry: Entry) -> str:
    if local_controller_alive(entry):
        return "RUNNING"
    summary = RunDir(entry.run_dir).summary_file
    try:  # a summary from an earlier run in the same directory does not count
        if summary.stat().st_mtime >= entry.submitted:
            return "COMPLETED"
    except OSError:
        pass
    return "STOPPED"


def base_state(state: str) -> str:
    """``PENDING (BeginTime)`` -> ``PENDING``."""
    return state.split()[0] if state else "UNKNOWN"


def has_ended(state: str) -> bool:
    """Whether a job in ``state`` runs no more and nothing restarts it by itself (UNKNOWN, a
    controller that cannot be asked, is not an end)."""
    return base_state(state) in ENDED_STATES


def lease_is_live(lease: Lease) -> bool:
    """Ask the holder's scheduler whether the job or process that holds a lease still runs (or
    will run again: a requeued Slurm job is pending). A holder that cannot be asked (another
    host's process, an unreachable controller) counts as alive: never two writers."""
    import socket

    if lease.scheduler == "slurm":
        slurm = Slurm(env={"SLURM_CONF": lease.slurm_conf} if lease.slurm_conf else None)
        try:
            return not has_ended(slurm.state(lease.job_id))
        except SlurmError:
            return True
    if lease.host != socket.gethostname():
        return True
    return process_alive(int(lease.job_id), lease.started)
