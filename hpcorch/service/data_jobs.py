"""``hpcorch data status|cancel|logs OUT``: a prepare's Slurm arrays as jobs.

A prepare's arrays are not entries of the job registry (they have no run folder, lease or
submitit task): everything about them lives in ``OUT/prepare/``: the completion markers say
which shards are done, ``submissions.json`` which array task ran each shard last (written by
:func:`hpcorch.service.data._submit`), and Slurm says what became of the others. Every Slurm
command line stays in :class:`hpcorch.cluster.slurm.Slurm`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from hpcorch.cluster.slurm import Slurm, SlurmError
from hpcorch.data import prepare as prep
from hpcorch.errors import HpcorchError
from hpcorch.submit.array import ArrayBatch
from hpcorch.util.fileio import atomic_write

SUBMISSIONS = "submissions.json"
# Slurm states of a task that is queued or starting, and of one whose step is running.
PENDING = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED")
RUNNING = ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING")


@dataclass
class ShardStatus:
    """One shard: ``state`` is done, running, pending, failed or not submitted; ``task`` the
    array task (``A_i``) that ran it last; ``slurm`` that task's Slurm state."""

    shard: str
    state: str
    task: str | None = None
    slurm: str | None = None


def _submissions_file(out: Path) -> Path:
    return Path(out) / prep.WORK / SUBMISSIONS


def record_submission(out: Path, batches: list[ArrayBatch], arrays: list[str]) -> None:
    """Append which array ran which run list slice (tmp + fsync + rename): status and logs
    find a shard's task from it."""
    rows = submissions(out) + [{"array": a, "run_list": str(b.run_list), "offset": b.offset, "count": b.count}
                               for a, b in zip(arrays, batches, strict=True)]
    atomic_write(_submissions_file(out), json.dumps(rows, indent=1) + "\n")


def submissions(out: Path) -> list[dict]:
    """The arrays submitted for ``out``, oldest first ([] when none, or none recorded)."""
    try:
        return list(json.loads(_submissions_file(out).read_text()))
    except (OSError, ValueError):
        return []


def _plan(out: str | os.PathLike) -> prep.PreparePlan:
    if not prep.plan_path(Path(out)).exists():
        raise HpcorchError(f"{out}: no prepare here ({prep.plan_path(Path(out))} is missing); "
                           "start one with hpcorch data prepare")
    return prep.load_plan(Path(out))


def _last_tasks(out: Path) -> dict[str, str]:
    """Each submitted shard's latest array task, ``{"shard_00003": "A_i"}``."""
    last = {}
    for row in submissions(out):
        batch = ArrayBatch(Path(out), Path(row["run_list"]), int(row["offset"]), int(row["count"]))
        for index, shard in enumerate(batch.task_ids()):
            last[shard] = f"{row['array']}_{index}"
    return last


def _slurm_states(tasks: dict[str, str], slurm: Slurm) -> dict[str, str]:
    """The Slurm state of each ``A_i``: the controller's (``squeue``), else accounting's for tasks
    it no longer holds; missing where neither knows it."""
    states: dict[str, str] = {}
    for array in dict.fromkeys(t.rsplit("_", 1)[0] for t in tasks.values()):
        states.update({t: s.split()[0] for t, s in slurm.array_tasks(array).items()})
    gone = [t for t in tasks.values() if t not in states]
    if gone:
        try:
            states.update(slurm.sacct_states(gone))
        except SlurmError:  # accounting disabled: those tasks stay unknown
            pass
    return states


def status(out: str | os.PathLike, slurm: Slurm | None = None) -> list[ShardStatus]:
    """Each shard's state, from its marker first (a marker is written last, so done is done),
    then from Slurm: running, pending, or failed (the task ended without a marker)."""
    plan = _plan(out)
    done = plan.tasks.done() if plan.tasks.tasks_file.exists() else set()
    tasks = {s: t for s, t in _last_tasks(plan.out).items() if s not in done}
    states = _slurm_states(tasks, slurm or Slurm()) if tasks else {}
    rows = []
    for shard in plan.shard_names:
        task = tasks.get(shard)
        slurm_state = states.get(task) if task else None
        if shard in done:
            state = "done"
        elif task is None:
            state = "not submitted"
        elif slurm_state in PENDING:
            state = "pending"
        elif slurm_state in RUNNING:
            state = "running"
        else:  # ended without its marker (or gone from the controller and accounting)
            state = "failed"
        rows.append(ShardStatus(shard, state, task, slurm_state))
    return rows


def cancel(out: str | os.PathLike, slurm: Slurm | None = None) -> list[str]:
    """Cancel every array of this prepare that still has tasks queued or running; their ids.
    Shards already done keep their files and markers; a rerun of the prepare redoes the rest."""
    plan = _plan(out)
    slurm = slurm or Slurm()
    try:  # arrays.json: every array id, from folders submitted before submissions.json existed too
        ids = list(json.loads((plan.out / prep.WORK / "arrays.json").read_text()))
    except (OSError, ValueError):
        ids = []
    cancelled = []
    for array in dict.fromkeys(ids + [row["array"] for row in submissions(plan.out)]):
        active = [s for s in slurm.array_tasks(array).values() if s.split()[0] in PENDING + RUNNING]
        if active:
            slurm.cancel(array)
            cancelled.append(array)
    return cancelled


def logs(out: str | os.PathLike, shard: int) -> dict[str, Path]:
    """The Slurm output and error files of the array task that ran shard ``shard`` last."""
    plan = _plan(out)
    if not 0 <= shard < len(plan.shard_names):
        raise HpcorchError(f"--task {shard}: expected a shard number from 0 to {len(plan.shard_names) - 1}")
    name = plan.shard_names[shard]
    task = _last_tasks(plan.out).get(name)
    if task is None:
        raise HpcorchError(f"{plan.out}: {name} was never run as an array task "
                           "(a prepare made here writes no task logs: its output goes to the terminal)")
    return {kind: plan.log_dir / f"{task}.{kind}" for kind in ("out", "err")}
