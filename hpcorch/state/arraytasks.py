"""Many tasks run as job-array tasks: which exist, which are done, which one this process is.

The layout follows datatrove's ``SlurmPipelineExecutor``: the task ids are written once, and
every submission writes the ids it runs (the incomplete ones) to a *run list*; array index
``i`` (plus the array's offset, when a run list is longer than ``MaxArraySize``) runs line
``i + offset`` of that list. So a rerun of only the incomplete tasks is again a contiguous
``--array=0-(n-1)``, never a sparse index list. A task is done when its marker exists, and a
task writes its marker last, once its outputs are durable (:meth:`ArrayTasks.mark_done`).

Layout (``T`` the tasks folder, owned by the caller: a sweep's folder, a data set's)::

    T/tasks.txt          every task id, one per line, written once
    T/runs/NNNN.txt      the ids one submission runs (array index i + offset -> line i + offset)
    T/done/<id>          the task's completion marker (JSON), written atomically

The code a task runs reads its id from ``HPCORCH_ARRAY_TASK`` (the array script and the local
runner set it; see :func:`current_task`). Nothing here imports the submit layer, so the batch
and train layers may mark tasks done.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.util.fileio import atomic_write, read_json

# A task id is a file name and a shell word: plain characters only, so no quoting is needed.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,127}")

# What the array script and the local runner export to each task.
ENV_TASK, ENV_ROOT, ENV_RUN_LIST, ENV_OFFSET = ("HPCORCH_ARRAY_TASK", "HPCORCH_ARRAY_ROOT",
                                               "HPCORCH_ARRAY_RUN_LIST", "HPCORCH_ARRAY_OFFSET")


class ArrayTaskError(HpcorchError):
    """A task list that is malformed, or asked about a task it does not hold (one line, exit 2)."""


def check_task_id(task_id: str) -> str:
    """``task_id`` if it is a valid id, else one line saying what a task id may hold."""
    if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
        raise ArrayTaskError(f"task id {task_id!r}: expected 1-128 characters of letters, digits and "
                             f"_.+=- (starting with a letter or digit)")
    return task_id


@dataclass(frozen=True)
class ArrayTasks:
    """One folder of tasks (see the module's layout)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def tasks_file(self) -> Path:
        return self.root / "tasks.txt"

    @property
    def done_dir(self) -> Path:
        return self.root / "done"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def marker(self, task_id: str) -> Path:
        return self.done_dir / check_task_id(task_id)

    # ----- the task list ----------------------------------------------------------------------
    def create(self, ids: list[str]) -> ArrayTasks:
        """Write the task list once. Writing it again with the same ids is a no-op (a rerun);
        other ids are refused: markers would then name tasks of another definition."""
        ids = [check_task_id(i) for i in ids]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ArrayTaskError(f"task id {dup!r} appears twice in {self.tasks_file}")
        if self.tasks_file.exists():
            if self.ids() != ids:
                raise ArrayTaskError(f"{self.tasks_file} already lists other tasks; use a new folder")
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(exist_ok=True)
        self.runs_dir.mkdir(exist_ok=True)
        atomic_write(self.tasks_file, "".join(f"{i}\n" for i in ids))
        return self

    def ids(self) -> list[str]:
        """Every task id, in the order they were written."""
        try:
            return self.tasks_file.read_text().split()
        except FileNotFoundError:
            raise ArrayTaskError(f"{self.tasks_file}: no task list (was the array ever created?)") from None

    # ----- completion -------------------------------------------------------------------------
    def mark_done(self, task_id: str, info: dict | None = None) -> None:
        """Write ``task_id``'s marker (tmp + fsync + rename): call it last, after the task's outputs
        are durable, so a marker never stands for outputs a crash could still lose."""
        self.done_dir.mkdir(parents=True, exist_ok=True)
        record = {"task": task_id, "time": time.time(), **(info or {})}
        atomic_write(self.marker(task_id), json.dumps(record, sort_keys=True) + "\n")

    def is_done(self, task_id: str) -> bool:
        return self.marker(task_id).is_file()

    def done_info(self, task_id: str) -> dict:
        """What the task recorded with its marker ({} when it is not done)."""
        return read_json(self.marker(task_id))

    def done(self) -> set[str]:
        """The ids whose marker exists (one directory listing, not one stat per task)."""
        try:
            names = {p.name for p in self.done_dir.iterdir() if not p.name.endswith(".tmp")}
        except FileNotFoundError:
            return set()
        return names & set(self.ids())

    def remaining(self) -> list[str]:
        """The ids not done yet, in task-list order: what a rerun submits."""
        finished = self.done()
        return [i for i in self.ids() if i not in finished]

    # ----- what one submission runs -------------------------------------------------------------
    def write_run_list(self, ids: list[str]) -> Path:
        """A new run list (``runs/NNNN.txt``) holding ``ids``, which must be tasks of this folder.
        Each submission gets its own file, so an array still running reads the list it started with."""
        known = set(self.ids())
        for task_id in ids:
            if task_id not in known:
                raise ArrayTaskError(f"task {task_id!r} is not in {self.tasks_file}")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.stem) for p in self.runs_dir.glob("[0-9]*.txt") if p.stem.isdigit()]
        path = self.runs_dir / f"{max(numbers, default=0) + 1:04d}.txt"
        atomic_write(path, "".join(f"{i}\n" for i in ids))
        return path

    @staticmethod
    def task_at(run_list: Path, index: int) -> str:
        """The task a run list gives array index ``index`` (offset already added)."""
        ids = Path(run_list).read_text().split()
        if not 0 <= index < len(ids):
            raise ArrayTaskError(f"array index {index} is outside {run_list} ({len(ids)} tasks)")
        return ids[index]


def current_task(environ: dict | None = None) -> str:
    """The id of the task this process runs (``HPCORCH_ARRAY_TASK``; else the run list's line
    ``SLURM_ARRAY_TASK_ID + HPCORCH_ARRAY_OFFSET``)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_TASK):
        return check_task_id(env[ENV_TASK])
    if env.get(ENV_RUN_LIST) and env.get("SLURM_ARRAY_TASK_ID"):
        index = int(env["SLURM_ARRAY_TASK_ID"]) + int(env.get(ENV_OFFSET) or 0)
        return ArrayTasks.task_at(Path(env[ENV_RUN_LIST]), index)
    raise ArrayTaskError(f"not an array task: {ENV_TASK} is not set")


def current_tasks(environ: dict | None = None) -> ArrayTasks:
    """The task folder of the array this process is a task of (``HPCORCH_ARRAY_ROOT``)."""
    env = os.environ if environ is None else environ
    if not env.get(ENV_ROOT):
        raise ArrayTaskError(f"not an array task: {ENV_ROOT} is not set")
    return ArrayTasks(Path(env[ENV_ROOT]))
