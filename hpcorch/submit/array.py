"""Submit N tasks as Slurm job arrays (or K at a time on this machine), and rerun only the rest.

The one owner of array submission (a sweep's points, a data set's shards). The task folder,
its completion markers and the run lists are :class:`hpcorch.state.arraytasks.ArrayTasks`'s;
this module cuts a run list into arrays and hands them to a scheduler:

* :func:`plan_arrays` -> one :class:`ArrayBatch` per array: a run list longer than
  ``MaxArraySize`` becomes several arrays, each ``--array=0-(n-1)%K`` with its own offset into
  the same run list (as datatrove's ``RUN_OFFSET``).
* The array script: a template includes ``hpcorch/array_directive.sh.j2`` in its ``#SBATCH``
  header and ``hpcorch/array_task.sh.j2`` before its command (the task id lands in
  ``HPCORCH_ARRAY_TASK``), with the batch as ``array``; or
  :func:`hpcorch.render.sbatch.render_array_script` renders the generic ``hpcorch/array.sh.j2``
  around a command.
* :func:`submit_slurm` sbatches each batch's script (one ``sbatch`` per array) and returns
  the array ids; :func:`run_local` runs the same tasks here, K at a time, each with the
  environment the array script would give it (``start_local`` does it in the background).

A task marks itself done (:meth:`ArrayTasks.mark_done`) once its outputs are durable; a rerun
is ``plan_arrays(tasks, tasks.remaining(), ...)``.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.state.arraytasks import (
    ENV_OFFSET,
    ENV_ROOT,
    ENV_RUN_LIST,
    ENV_TASK,
    ArrayTasks,
    check_task_id,
)

log = logging.getLogger(__name__)

# Slurm's default MaxArraySize: indices 0..1000.
DEFAULT_MAX_ARRAY_SIZE = 1001


class ArrayError(HpcorchError):
    pass


@dataclass(frozen=True)
class ArrayBatch:
    """One array: tasks ``offset .. offset+count-1`` of ``run_list`` as indices ``0 .. count-1``."""

    root: Path            # the task folder (ArrayTasks.root)
    run_list: Path        # runs/NNNN.txt of this submission
    offset: int
    count: int
    max_parallel: int | None = None  # the %K throttle; None: as many as Slurm starts

    @property
    def directive(self) -> str:
        """``--array=0-(count-1)[%K]``, the option the array's ``#SBATCH`` line carries."""
        throttle = f"%{self.max_parallel}" if self.max_parallel else ""
        return f"--array=0-{self.count - 1}{throttle}"

    def task_ids(self) -> list[str]:
        """The ids this array runs, index 0 first."""
        return Path(self.run_list).read_text().split()[self.offset:self.offset + self.count]

    def environment(self, index: int | None = None) -> dict[str, str]:
        """What a task of this array finds in its environment (with ``index``: that task's id too)."""
        env = {ENV_ROOT: str(self.root), ENV_RUN_LIST: str(self.run_list), ENV_OFFSET: str(self.offset)}
        if index is not None:
            env[ENV_TASK] = ArrayTasks.task_at(self.run_list, self.offset + index)
        return env


def chunks(n: int, max_array_size: int = DEFAULT_MAX_ARRAY_SIZE) -> list[tuple[int, int]]:
    """``(offset, count)`` of each array that runs ``n`` tasks: indices stay below ``max_array_size``."""
    if max_array_size < 1:
        raise ArrayError(f"MaxArraySize {max_array_size}: expected at least 1")
    return [(start, min(max_array_size, n - start)) for start in range(0, n, max_array_size)]


def plan_arrays(tasks: ArrayTasks, ids: Sequence[str], max_parallel: int | None = None,
                max_array_size: int = DEFAULT_MAX_ARRAY_SIZE) -> list[ArrayBatch]:
    """Write a run list of ``ids`` (tasks of ``tasks``) and cut it into arrays. No ids: no arrays
    (and no run list): a rerun of a finished folder submits nothing."""
    if max_parallel is not None and max_parallel < 1:
        raise ArrayError(f"--max-parallel {max_parallel}: expected a whole number of at least 1")
    ids = [check_task_id(i) for i in ids]
    if not ids:
        return []
    run_list = tasks.write_run_list(ids)
    return [ArrayBatch(tasks.root, run_list, offset, count, max_parallel)
            for offset, count in chunks(len(ids), max_array_size)]


def submit_slurm(scripts: Sequence[str], slurm=None) -> list[str]:
    """sbatch each array script (one call per array); the arrays' ids in order."""
    from hpcorch.cluster.slurm import Slurm

    slurm = slurm or Slurm()
    return [slurm.sbatch(script) for script in scripts]


# ----- the local backend: the same tasks, K at a time, on this machine ---------------------------
@dataclass
class LocalRun:
    """What :func:`run_local` did: each task's exit code."""

    codes: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [t for t, code in self.codes.items() if code != 0]


def run_local(batches: Sequence[ArrayBatch], command: Sequence[str] | Callable[[str], Sequence[str]],
              log_dir: Path, max_parallel: int | None = None, env: dict[str, str] | None = None,
              poll_s: float = 0.2) -> LocalRun:
    """Run every task of ``batches`` here, at most ``max_parallel`` (default: the batches' %K,
    else 1) at once; each gets the array's environment with ``HPCORCH_ARRAY_TASK`` and
    ``SLURM_ARRAY_TASK_ID`` unset, its output in ``LOG_DIR/local_<id>.out|err``. ``command``: the
    argv, or a function of the task id giving it. Blocks until all end."""
    limit = max_parallel or next((b.max_parallel for b in batches if b.max_parallel), None) or 1
    queue = [(batch, index) for batch in batches for index in range(batch.count)]
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    running: dict[str, subprocess.Popen] = {}
    result = LocalRun()
    while queue or running:
        while queue and len(running) < limit:
            batch, index = queue.pop(0)
            task_env = {**os.environ, **(env or {}), **batch.environment(index)}
            task_env.pop("SLURM_ARRAY_TASK_ID", None)
            task_id = task_env[ENV_TASK]
            argv = list(command(task_id) if callable(command) else command)
            out_path, err_path = log_dir / f"local_{task_id}.out", log_dir / f"local_{task_id}.err"
            with open(out_path, "ab") as out, open(err_path, "ab") as err:
                running[task_id] = subprocess.Popen(argv, env=task_env, stdout=out, stderr=err,
                                                    stdin=subprocess.DEVNULL)
        for task_id, proc in list(running.items()):
            if proc.poll() is not None:
                result.codes[task_id] = proc.returncode
                del running[task_id]
        if running:
            time.sleep(poll_s)
    return result


def start_local(batches: Sequence[ArrayBatch], command: Sequence[str], log_dir: Path,
                max_parallel: int | None = None, env: dict[str, str] | None = None) -> int:
    """:func:`run_local` in a background process of its own session (it outlives this command);
    its pid. Its own output goes to ``LOG_DIR/local_runner.log``."""
    args = [sys.executable, "-m", "hpcorch.submit.array", "--log-dir", str(log_dir)]
    for batch in batches:
        args += ["--batch", f"{batch.root}|{batch.run_list}|{batch.offset}|{batch.count}"]
    if max_parallel:
        args += ["--max-parallel", str(max_parallel)]
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(log_dir) / "local_runner.log", "ab") as out:
        proc = subprocess.Popen([*args, "--", *command], env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcorch.submit.array``: :func:`start_local`'s background runner."""
    parser = argparse.ArgumentParser(prog="python -m hpcorch.submit.array")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--batch", action="append", required=True, help="ROOT|RUN_LIST|OFFSET|COUNT")
    parser.add_argument("--max-parallel", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    batches = []
    for text in args.batch:
        root, run_list, offset, count = text.split("|")
        batches.append(ArrayBatch(Path(root), Path(run_list), int(offset), int(count), args.max_parallel))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = run_local(batches, command, Path(args.log_dir), args.max_parallel)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
