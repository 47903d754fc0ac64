"""Observe jobs: a run's progress from its run directory, ``ls`` rows, advice, and following a log
as it grows. Whether a job runs is :mod:`hpcorch.state.jobstate`'s."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from hpcorch.observe.manifest import attempt_sizes, sizes_text
from hpcorch.state.jobstate import base_state, has_ended
from hpcorch.state.registry import Entry
from hpcorch.state.rundir import RunDir
from hpcorch.util.poll import Backoff

# submitit's own bookkeeping lines in a rank's log ("submitit INFO (2026-...) - Job completed")
_SUBMITIT_LINE = re.compile(r"^submitit (INFO|DEBUG) \(")


def progress(entry: Entry) -> dict:
    """Restarts, latest committed checkpoint, last loss and throughput from the run directory."""
    run = RunDir.open(entry.run_dir)
    prog, metrics, budget = run.progress(), run.last_metrics(), run.restarts()
    return {
        "step": prog.get("step"),
        "steps": planned_steps(run),
        "restarts": run.restart_count(),
        "requeues": {k: budget.get(k, 0) for k in ("preemption", "timeout", "node_failure")},
        "latest_checkpoint": run.latest_checkpoint(),
        "loss": metrics.get("loss"),
        "tokens_per_s": metrics.get("tokens_per_s"),
        "note": budget.get("refused") or None,
        "placement": placement_summary(run),
        "world": sizes_text(attempt_sizes(run)),  # each attempt's world size and nodes
    }


def last_failure(run: RunDir) -> str | None:
    """The last failure recovery recorded (``failures.jsonl``: Slurm's batch script), as one
    line with its attempt and step; None before any."""
    from hpcorch.util.fileio import json_lines

    records = list(json_lines(run.failures)) if run.failures.exists() else []
    if not records:
        return None
    last = records[-1]
    step = f", step {last['step']}" if last.get("step") is not None else ""
    return f"attempt {last.get('attempt', '?')}{step}: {last.get('what', '?')}"


def local_failure(entry: Entry) -> str | None:
    """Which ranks of an ended local job (submitit's local controller, which records no exit
    codes) were killed outright, told from the others: a task that returned, even with an
    exception, left submitit a result file, and one that failed with an error it could see an
    exit record (``RUN/exits``); one killed by a signal leaves neither. Only when another rank
    left either: ranks that all stopped on a signal (a cancel, a requeue) leave neither too."""
    from hpcorch.protocol import killed_by_text

    run = RunDir(entry.run_dir)
    folder = Path(run.submitit_folder.replace("%j", str(entry.job_id)))
    tasks = sorted(int(m[1]) for f in (folder.glob("*_log.out") if folder.is_dir() else [])
                   if (m := re.fullmatch(rf"{re.escape(str(entry.job_id))}_(\d+)_log\.out", f.name)))

    def spoke(task: int) -> bool:
        if (folder / f"{entry.job_id}_{task}_result.pkl").exists():
            return True
        records = run.exit_record(0, task).parent.parent.glob(f"attempt-*/rank-{task}.json")
        return any(r.stat().st_mtime >= entry.submitted for r in records)

    silent = [t for t in tasks if not spoke(t)]
    if not silent or len(silent) == len(tasks):
        return None
    import signal

    who = f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} {'were' if len(silent) > 1 else 'was'}"
    return f"{who} killed outright, likely by {killed_by_text(signal.SIGKILL)}: no result, no exit record"


def planned_steps(run: RunDir) -> int | None:
    """``trainer.steps`` of the run's resolved job, or a program job's ``program.steps`` (None
    before job.yaml exists, when unreadable, or for a program that gives none)."""
    from hpcorch.errors import HpcorchError
    from hpcorch.spec.yamlio import parse_yaml

    try:
        job = parse_yaml(run.job_file.read_text(), str(run.job_file))
        steps = job["program"]["steps"] if job.get("program") else job["trainer"]["steps"]
    except (OSError, UnicodeDecodeError, HpcorchError, KeyError, TypeError, AttributeError):
        return None
    return steps if isinstance(steps, int) else None


def row(entry: Entry) -> dict:
    """What ``hpcorch ls`` shows of a job besides its state, from its run directory without
    asking anyone (a remote job's from its last ``hpcorch pull``, else nothing): step, planned
    steps and the time of submission."""
    folder = entry.observable_dir
    run = RunDir(folder)
    step = run.progress().get("step") if Path(folder).is_dir() else None
    return {"step": step, "steps": planned_steps(run) if step is not None else None,
            "submitted": entry.submitted}


def placement_summary(run: RunDir) -> str | None:
    """``2 nodes on 1 leaf switch (leaf1)`` for the latest process start of the run, from the
    ranks' ``placement`` events (None before any). A leaf is the second-to-last component of
    SLURM_TOPOLOGY_ADDR (``spine.leaf1.node1``); without one (no topology plugin, or a local
    run) only the nodes are counted."""
    from hpcorch.util.fileio import json_lines

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
