"""Observe jobs: scheduler states (batched over many jobs), a run's progress from its run
directory, whether a lease holder is alive, and following a log as it grows."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from .cluster.slurm import FINAL_STATES, Slurm, SlurmError
from .poll import Backoff
from .registry import Entry
from .rundir import Lease, RunDir

ENDED_STATES = FINAL_STATES | {"STOPPED"}  # STOPPED: a local job whose controller is gone
# submitit's own bookkeeping lines in a rank's log ("submitit INFO (2026-...) - Job completed")
_SUBMITIT_LINE = re.compile(r"^submitit (INFO|DEBUG) \(")


def slurm_states(entries: list[Entry]) -> dict[str, str]:
    """States of many Slurm jobs, batched per cluster (SLURM_CONF) as :meth:`Slurm.states`
    decides them; PENDING carries its reason. If the controller cannot be asked, accounting
    alone answers, and a job it does not know is UNKNOWN."""
    states: dict[str, str] = {}
    by_conf: dict[str | None, list[str]] = {}
    for e in entries:
        by_conf.setdefault(e.slurm_conf, []).append(e.job_id)
    for conf, ids in by_conf.items():
        slurm = Slurm(env={"SLURM_CONF": conf} if conf else None)
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
    if (lease.scheduler, lease.job_id) != ("local", entry.job_id):
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


def states(entries: list[Entry]) -> dict[int, str]:
    """Each entry's current state, keyed by registry number."""
    slurm = slurm_states([e for e in entries if e.scheduler == "slurm"])
    return {e.key: slurm.get(e.job_id, "UNKNOWN") if e.scheduler == "slurm" else local_state(e)
            for e in entries}


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


def progress(entry: Entry) -> dict:
    """Restarts, latest committed checkpoint, last loss and throughput from the run directory."""
    run = RunDir.open(entry.run_dir)
    prog, metrics, budget = run.progress(), run.last_metrics(), run.restarts()
    return {
        "step": prog.get("step"),
        "steps": planned_steps(run),
        "restarts": prog.get("restarts", 0),
        "requeues": {k: budget.get(k, 0) for k in ("preemption", "timeout", "node_failure")},
        "latest_checkpoint": run.latest_checkpoint(),
        "loss": metrics.get("loss"),
        "tokens_per_s": metrics.get("tokens_per_s"),
        "note": budget.get("refused") or None,
        "placement": placement_summary(run),
    }


def planned_steps(run: RunDir) -> int | None:
    """``trainer.steps`` of the run's resolved job (None before job.yaml exists, or unreadable)."""
    from .errors import HpcorchError
    from .spec.yamlio import parse_yaml

    try:
        steps = parse_yaml(run.job_file.read_text(), str(run.job_file))["trainer"]["steps"]
    except (OSError, UnicodeDecodeError, HpcorchError, KeyError, TypeError):
        return None
    return steps if isinstance(steps, int) else None


def row(entry: Entry) -> dict:
    """What ``hpcorch ls`` shows of a job besides its state, from its run directory without
    asking anyone (a remote job's from its last ``hpcorch pull``, else nothing): step, planned
    steps and the time of submission."""
    folder = entry.run_dir
    if entry.remote:
        from .remote.ops import pulled_dir

        folder = str(pulled_dir(entry))
    run = RunDir(folder)
    step = run.progress().get("step") if Path(folder).is_dir() else None
    return {"step": step, "steps": planned_steps(run) if step is not None else None,
            "submitted": entry.submitted}


def placement_summary(run: RunDir) -> str | None:
    """``2 nodes on 1 leaf switch (leaf1)`` for the latest process start of the run, from the
    ranks' ``placement`` events (None before any). A leaf is the second-to-last component of
    SLURM_TOPOLOGY_ADDR (``spine.leaf1.node1``); without one (no topology plugin, or a local
    run) only the nodes are counted."""
    from .fileio import json_lines

    records: list[dict] = []
    for event in json_lines(run.events):
        if event.get("event") == "process_start":
            records = []  # a later start's ranks replace the earlier ones
        elif event.get("event") == "placement":
            records.append(event)
    if not records:
        return None
    nodes = list(dict.fromkeys(str(r.get("node")) for r in records))
    addrs = [str(r["topology_addr"]).split(".") for r in records if r.get("topology_addr")]
    leaves = list(dict.fromkeys(parts[-2] for parts in addrs if len(parts) >= 2))
    where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    if not leaves:
        return f"{where} ({', '.join(nodes[:4])}{', ...' if len(nodes) > 4 else ''}; no switch recorded)"
    unit = "leaf switch" if len(leaves) == 1 else "leaf switches"
    return f"{where} on {len(leaves)} {unit} ({', '.join(leaves)})"


def advice(entry: Entry, state: str) -> str | None:
    """What the user should do next, if anything: ``resume`` only when the job has ended
    without completing (nothing restarts it by itself)."""
    base = base_state(state)
    if base == "COMPLETED":
        return None
    if has_ended(state):
        return f"hpcorch resume {entry.key}"
    if base == "REQUEUE_HOLD" or "JobHeldUser" in state or "JobHeldAdmin" in state:
        return f"none until released: scontrol release {entry.job_id}"
    if base in ("REQUEUED", "REQUEUE_FED") or (base == "PENDING" and "BeginTime" in state):
        return "none: Slurm starts it again by itself"
    return None


def follow(path: Path, done: Callable[[], bool], write: Callable[[str], None], poll_s: float = 0.5,
           backoff: Backoff | None = None, show_submitit: bool = False) -> None:
    """Pass ``path``'s text to ``write`` as it grows, until ``done()`` and the end is read.

    The file is read every ``poll_s``; ``done`` (which asks the scheduler) only when
    ``backoff`` says so, like submitit's watcher. submitit's INFO lines are left out unless
    ``show_submitit``.
    """
    import time

    backoff = backoff or Backoff()
    offset, pending = 0, ""
    while True:
        finished = backoff.due() and done()
        try:
            with open(path, errors="replace") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
        except OSError:
            chunk = ""
        text, pending = _complete_lines(pending + chunk, flush=finished)
        if text:
            write(text if show_submitit else _without_submitit(text))
        if finished:
            return
        time.sleep(poll_s)


def _complete_lines(text: str, flush: bool) -> tuple[str, str]:
    """Split off a trailing partial line (kept for the next read) unless flushing."""
    if flush or text.endswith("\n"):
        return text, ""
    cut = text.rfind("\n") + 1
    return text[:cut], text[cut:]


def _without_submitit(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not _SUBMITIT_LINE.match(line))
