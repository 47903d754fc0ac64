"""What a job is doing: scheduler state (batched over many jobs) and the run directory's progress."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .registry import Entry
from .cluster.slurm import FINAL_STATES, Slurm, SlurmError


def slurm_states(entries: list[Entry]) -> dict[str, str]:
    """States of many Slurm jobs, per cluster (SLURM_CONF): one squeue call answers for every
    job the controller still holds (finished ones too, for MinJobAge), one sacct call for the
    older ones. The controller comes first: accounting lags behind it."""
    states: dict[str, str] = {}
    by_conf: dict[str | None, list[str]] = {}
    for e in entries:
        by_conf.setdefault(e.slurm_conf, []).append(e.job_id)
    for conf, ids in by_conf.items():
        slurm = Slurm(env={"SLURM_CONF": conf} if conf else None)
        try:
            states.update(slurm.sacct_states(ids))
        except SlurmError:
            pass  # no accounting: squeue alone still answers for live jobs
        try:
            out = slurm.run("squeue", "-h", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(ids), check=False)
        except SlurmError:
            out = ""
        for line in out.splitlines():
            job_id, state, reason = (line.split("|") + ["", ""])[:3]
            states[job_id] = f"{state} ({reason})" if state == "PENDING" and reason not in ("", "None") else state
    return states


def local_state(entry: Entry) -> str:
    import psutil

    if psutil.pid_exists(int(entry.job_id)):
        try:
            if psutil.Process(int(entry.job_id)).status() != psutil.STATUS_ZOMBIE:
                return "RUNNING"
        except psutil.Error:
            pass
    if (Path(entry.run_dir) / "summary.json").exists():
        return "COMPLETED"
    return "STOPPED"


def states(entries: list[Entry]) -> dict[int, str]:
    slurm = slurm_states([e for e in entries if e.scheduler == "slurm"])
    return {e.key: slurm.get(e.job_id, "UNKNOWN") if e.scheduler == "slurm" else local_state(e)
            for e in entries}


def has_ended(entry: Entry) -> bool:
    """Whether the job runs no more (a local job that stopped counts as ended)."""
    return states([entry])[entry.key].split()[0] in FINAL_STATES | {"STOPPED"}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def last_line(path: Path, max_bytes: int = 65536) -> dict:
    """The last JSON line of a file, reading only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            lines = f.read().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def progress(entry: Entry) -> dict:
    """Restarts, latest committed checkpoint, last loss and throughput from the run directory."""
    run = Path(entry.run_dir)
    prog, metrics = _json(run / "progress.json"), last_line(run / "metrics.jsonl")
    budget = _json(run / "restarts.json")
    ckpts = sorted(p.parent.name for p in (run / "checkpoints").glob("step_*/COMMITTED"))
    return {
        "step": prog.get("step"),
        "restarts": prog.get("restarts", 0),
        "requeues": {k: budget.get(k, 0) for k in ("preemption", "timeout", "node_failure")},
        "latest_checkpoint": int(ckpts[-1].split("_")[1]) if ckpts else None,
        "loss": metrics.get("loss"),
        "tokens_per_s": metrics.get("tokens_per_s"),
        "note": budget.get("refused") or None,
    }
