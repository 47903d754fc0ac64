"""The run directory: the one owner of every file and folder of a run.

Like submitit's ``JobPaths``, :class:`RunDir` names every path; nothing else in hpcorch joins a
file name onto a run directory. It also offers the reads ``hpcorch status`` needs (progress,
last metrics, restart budgets, committed checkpoints, the lease) without importing torch, and
:func:`hpcorch.util.fileio.atomic_write` is the one way any of its files is written.

Layout (``R`` the run directory)::

    R/job.yaml               the resolved job every rank and every restart reads
    R/lease.json             which job (and attempt) may write here now; see :class:`Lease`
    R/checkpoints/step_NNNNNNNNN/   (or the job's trainer.checkpoint.dir)
    R/metrics.jsonl          one line per step (rank 0)
    R/events.jsonl           process starts, first steps, signals, committed checkpoints
    R/progress.json          furthest step, restarts, steps recomputed (rewritten every step)
    R/restarts.json          requeues spent per cause, and the last refusal
    R/config_accepted.json   the training config the user accepted over a checkpoint's (--allow-config-change)
    R/summary.json           written once the run completes
    R/goodput.json           an ended job's goodput for `hpcorch ls`, while its records keep their size
    R/health/attempt-N/NODE.json   each node's pre-flight report of attempt N (SLURM_RESTART_COUNT)
    R/manifests/attempt-N.json|.patch  what ran in the run's Nth attempt (submission.json: the submit's record)
    R/logs/%j.out|err        the batch script's own output; logs/controller.log (local)
    R/submitit/%j/           submitit's pickles and per-rank logs (submitit's JobPaths names)
    R/submitit/task.pkl      a sweep point's task, copied to submitit/A_i/ by its array task
    R/sbatch.sh              a sweep point's own script, which its array task runs
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.util.fileio import atomic_write, last_json_line, read_json

COMMIT_MARKER = "COMMITTED"
LEASE_ENV = "HPCORCH_LEASE"  # the holder's token, for the ranks it starts: see RunDir.check_fence
_STEP_PREFIX = "step_"


class CheckpointLayout:
    """Names inside a checkpoint root: one ``step_NNNNNNNNN`` folder per step, complete only
    when it holds the ``COMMITTED`` marker (written last)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def step_dir(self, step: int) -> Path:
        return self.root / f"{_STEP_PREFIX}{step:09d}"

    @staticmethod
    def step_of(folder: Path) -> int | None:
        name = folder.name
        if not name.startswith(_STEP_PREFIX):
            return None
        try:
            return int(name[len(_STEP_PREFIX):])
        except ValueError:
            return None

    def step_dirs(self) -> dict[int, Path]:
        found = {}
        for d in self.root.glob(f"{_STEP_PREFIX}*"):
            step = self.step_of(d)
            if step is not None:
                found[step] = d
        return found

    def committed_steps(self) -> list[int]:
        """Steps whose folder holds the commit marker, oldest first."""
        return sorted(s for s, d in self.step_dirs().items() if (d / COMMIT_MARKER).exists())

    def record(self, step: int) -> dict:
        """The commit record of ``step`` (plain JSON: train state, file digests, the recorded
        training config); {} if it is not committed or unreadable."""
        return read_json(self.step_dir(step) / COMMIT_MARKER)


@dataclass
class Lease:
    """Who may write into a run directory now.

    A file, not a lock held by a process, so it survives the node failure that ends its holder:
    whether the holder is still alive is decided by asking its scheduler (Slurm's view of the
    job, or the local process table), never by the file's age.
    """

    scheduler: str          # "slurm", "local" (submitit's local controller) or "process" (hpcorch train)
    job_id: str             # Slurm job id, or the controller's / launcher's pid
    attempt: int = 0        # SLURM_RESTART_COUNT of the attempt that last claimed it
    host: str = field(default_factory=socket.gethostname)
    started: float = 0.0    # the holder process's start time (guards against pid reuse)
    slurm_conf: str | None = None  # which cluster to ask
    claimed: float = field(default_factory=time.time)

    @classmethod
    def for_holder(cls, scheduler: str, job_id: str, attempt: int = 0, slurm_conf: str | None = None) -> Lease:
        """The lease of a holder. A local holder is a pid: its start time is recorded too, so
        a later process that reuses the number is never taken for it."""
        started = 0.0
        if scheduler in ("local", "process"):
            import psutil

            started = psutil.Process(int(job_id)).create_time()
        return cls(scheduler, job_id, attempt=attempt, started=started, slurm_conf=slurm_conf)

    def token(self) -> str:
        """What the holder's ranks carry (``HPCORCH_LEASE``) to prove, before they commit, that
        the run directory is still theirs."""
        return f"{self.scheduler}:{self.job_id}:{self.attempt}"

    def names(self) -> str:
        kind = {"slurm": "Slurm job", "local": "local job", "process": "hpcorch train process"}
        return f"{kind.get(self.scheduler, self.scheduler)} {self.job_id}"


class RunDirBusy(HpcorchError):
    """Another live job or process holds the run directory's lease."""


class RunDir:
    """Every path of one run, and the reads that observe it without torch."""

    def __init__(self, root: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None):
        self.root = Path(root).expanduser().absolute()
        self.checkpoints = Path(checkpoint_dir).expanduser().absolute() if checkpoint_dir \
            else self.root / "checkpoints"

    @classmethod
    def for_job(cls, root: str | os.PathLike, job) -> RunDir:
        """The run directory of ``job`` (a JobSpec): honours ``trainer.checkpoint.dir`` (a
        program job's ``program.checkpoint_dir``)."""
        program = getattr(job, "program", None)
        return cls(root, program.checkpoint_dir if program is not None else job.trainer.checkpoint.dir)

    @classmethod
    def open(cls, root: str | os.PathLike) -> RunDir:
        """An existing run directory, its checkpoint folder read from its resolved job."""
        from hpcorch.spec.job import load_job

        run = cls(root)
        if run.job_file.exists():
            try:
                return cls.for_job(root, load_job(run.job_file))
            except HpcorchError:
                pass  # a job file we cannot read still leaves the other files readable
        return run

    @staticmethod
    def looks_like_run(path: str | os.PathLike, *, started: bool = False) -> bool:
        """Whether ``path`` is an hpcorch run directory: it holds the resolved ``job.yaml`` (and,
        with ``started``, the ``events.jsonl`` a started run writes)."""
        run = RunDir(path)
        return run.job_file.is_file() and (not started or run.events.is_file())

    # ----- names ---------------------------------------------------------------------------
    job_file = property(lambda self: self.root / "job.yaml")
    lease_file = property(lambda self: self.root / "lease.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    events = property(lambda self: self.root / "events.jsonl")
    progress_file = property(lambda self: self.root / "progress.json")
    restarts_file = property(lambda self: self.root / "restarts.json")
    summary_file = property(lambda self: self.root / "summary.json")
    config_accepted_file = property(lambda self: self.root / "config_accepted.json")
    logs = property(lambda self: self.root / "logs")
    controller_log = property(lambda self: self.root / "logs" / "controller.log")

    array_task_pickle = property(lambda self: self.root / "submitit" / "task.pkl")  # a sweep point's
    array_script = property(lambda self: self.root / "sbatch.sh")
    failures = property(lambda self: self.root / "failures.jsonl")
    goodput_file = property(lambda self: self.root / "goodput.json")  # an ended job's figure, for ls
    # A program job's latest checkpoint as it reported it (hpcorch.runtime.checkpoint_committed).
    program_checkpoint_file = property(lambda self: self.root / "program_checkpoint.json")
    manifests = property(lambda self: self.root / "manifests")
    # Where a node range's batch script shrinks its allocation: Slurm writes slurm_job_ID_resize.sh here.
    resize_folder = property(lambda self: self.root / "resize")

    def manifest_file(self, attempt: int | None, suffix: str = "json") -> Path:
        """The Nth attempt's manifest (``json``) or code patch (``patch``); None: the submission's record."""
        return self.manifests / (f"attempt-{int(attempt)}.{suffix}" if attempt is not None else "submission.json")

    def exit_record(self, attempt: int, rank: int) -> Path:
        """Why rank ``rank`` of attempt ``attempt`` (Slurm's restart count) ended with an error,
        as the rank saw it (:mod:`hpcorch.batch.recovery` reads them; a killed rank leaves none)."""
        return self.root / "exits" / f"attempt-{attempt}" / f"rank-{rank}.json"

    def batch_log(self, stream: str = "out", job_id: str = "%j") -> Path:
        """The batch script's own stdout/stderr (``#SBATCH --output``; ``%j`` for Slurm)."""
        return self.logs / f"{job_id}.{stream}"

    def health_dir(self, attempt: int) -> Path:
        """The pre-flight reports of attempt ``attempt`` (Slurm's SLURM_RESTART_COUNT)."""
        return self.root / "health" / f"attempt-{int(attempt)}"

    def health_report(self, attempt: int, node: str) -> Path:
        """Node ``node``'s pre-flight report of attempt ``attempt``."""
        if not node or "/" in node or node.startswith("."):
            raise ValueError(f"not a node name: {node!r}")
        return self.health_dir(attempt) / f"{node}.json"

    @property
    def submitit_folder(self) -> str:
        """submitit's folder per job, as a pattern (``%j``: the job id)."""
        return f"{self.root}/submitit/%j"

    def rank_log_pattern(self, stream: str = "out", job: str = "%j") -> str:
        """The per-rank log as srun's ``--output`` pattern. submitit's ``JobPaths`` spells
        the same name (a test checks that they agree); this copy keeps dry runs free of
        importing submitit. ``job``: ``%A_%a`` for an array task, whose submitit job id is
        ``A_i`` (srun's ``%j`` would be the task's own number)."""
        return f"{self.root}/submitit/{job}/{job}_%t_log.{stream}"

    def rank_log(self, job_id: str, rank: int = 0, stream: str = "out") -> Path:
        """Rank ``rank``'s log of job ``job_id``, named by submitit's own ``JobPaths``."""
        from submitit.core.utils import JobPaths

        paths = JobPaths(self.submitit_folder, job_id=job_id, task_id=rank)
        return paths.stdout if stream == "out" else paths.stderr

    @property
    def checkpoint_layout(self) -> CheckpointLayout:
        return CheckpointLayout(self.checkpoints)

    # ----- writes --------------------------------------------------------------------------
    def check_location(self) -> None:
        """Raise one clear error if the run directory (or its checkpoint folder) cannot be
        made where it is asked for: a file stands in the way, or a folder is not writable."""
        for wanted in (self.root, self.checkpoints):
            for folder in (wanted, *wanted.parents):
                if not folder.exists():
                    continue
                if not folder.is_dir():
                    raise HpcorchError(f"{wanted}: {folder} is a file, not a directory")
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise HpcorchError(f"{wanted}: {folder} is not writable")
                break

    def create(self) -> RunDir:
        """Make the folders a run writes into."""
        for folder in (self.root, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def write_job(self, job) -> Path:
        """``job.yaml``: the job exactly as validated (overrides applied)."""
        from hpcorch.spec.job import job_to_dict
        from hpcorch.spec.yamlio import dump_yaml, parse_yaml

        self.create()
        data = job_to_dict(job)
        if job.program is not None:
            if job.program.checkpoint_dir:
                data["program"]["checkpoint_dir"] = str(self.checkpoints)
        elif job.trainer.checkpoint.dir:  # absolute: every reader resolves it alike, wherever it runs
            data["trainer"]["checkpoint"]["dir"] = str(self.checkpoints)
        text = dump_yaml(data)
        # Every rank rebuilds the job from this file: it must read back as exactly this job.
        if parse_yaml(text, str(self.job_file)) != data:
            raise HpcorchError(f"{self.job_file}: the resolved job does not read back as written")
        atomic_write(self.job_file, text)
        return self.job_file

    def append_event(self, name: str, durable: bool = False, **fields) -> None:
        """Append a timestamped event (``time`` may be given: when it really happened);
        ``durable``: fsync it (an event that must survive a power cut, such as a config change)."""
        record = {"event": name, "time": time.time(), **fields}
        with open(self.events, "a") as f:
            f.write(json.dumps(record) + "\n")
            if durable:
                f.flush()
                os.fsync(f.fileno())

    def append_events(self, name: str, records: list[dict], durable: bool = False) -> None:
        """Append one ``name`` event per record, in one write and (``durable``) one fsync: a
        thousand ranks' placement records must not cost a thousand fsyncs."""
        now = time.time()
        lines = "".join(json.dumps({"event": name, "time": now, **record}) + "\n" for record in records)
        with open(self.events, "a") as f:
            f.write(lines)
            if durable:
                f.flush()
                os.fsync(f.fileno())

    def accept_config(self, config: dict, changes: list[str]) -> None:
        """Record that the user accepted ``config`` (a training config, see
        :mod:`hpcorch.spec.compat`) over the checkpoint's, with its ``changes``. A file, not a
        flag on one process: every rank and every requeued attempt of the run reads it."""
        self.create()
        atomic_write(self.config_accepted_file, json.dumps({"config": config, "changes": changes,
                                                            "time": time.time()}, indent=1))

    def accepted_config(self) -> dict | None:
        """The training config last accepted with ``--allow-config-change``, if any."""
        return read_json(self.config_accepted_file).get("config")

    # ----- reads (no torch) ----------------------------------------------------------------
    def progress(self) -> dict:
        return read_json(self.progress_file)

    def last_metrics(self) -> dict:
        return last_json_line(self.metrics)

    def restarts(self) -> dict:
        return read_json(self.restarts_file)

    def summary(self) -> dict:
        return read_json(self.summary_file)

    def latest_checkpoint(self) -> int | None:
        """The latest committed checkpoint's step: the trainer's, else the one a program reported."""
        steps = self.checkpoint_layout.committed_steps()
        if steps:
            return steps[-1]
        step = read_json(self.program_checkpoint_file).get("step")
        return step if isinstance(step, int) else None

    def recorded_config(self, step: int | None = None) -> tuple[int, dict] | None:
        """(step, training config) recorded with checkpoint ``step`` (default: the latest
        committed); None if there is none, or it predates recorded configs."""
        step = self.latest_checkpoint() if step is None else step
        config = self.checkpoint_layout.record(step).get("config") if step is not None else None
        return (step, config) if isinstance(config, dict) else None

    # ----- the lease -----------------------------------------------------------------------
    def lease(self) -> Lease | None:
        data = read_json(self.lease_file)
        try:
            return Lease(**data) if data else None
        except TypeError:
            return None

    def ensure_free(self, lease: Lease, is_live: Callable[[Lease], bool]) -> None:
        """Raise :class:`RunDirBusy` if another holder than ``lease``'s, one that ``is_live``
        says still runs (or is requeued), holds the lease. The same holder (a requeued
        attempt of the same job) may go on."""
        current = self.lease()
        if current and (current.scheduler, current.job_id) != (lease.scheduler, lease.job_id) \
                and is_live(current):
            raise RunDirBusy(f"run directory {self.root} is in use by {current.names()} (on "
                             f"{current.host}), which is running or will restart by itself; cancel it "
                             f"first or use another --run-dir (if it is gone for good, remove "
                             f"{self.lease_file})")

    def take(self, lease: Lease) -> None:
        """Record ``lease``'s holder as the one writer of this run directory."""
        self.create()
        atomic_write(self.lease_file, json.dumps(asdict(lease)))

    @contextmanager
    def lease_lock(self) -> Iterator[None]:
        """Serialise check-then-take of the lease between processes on this file system (two
        submits into one directory at once: the second sees the first's job)."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lease.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def check_fence(self) -> None:
        """Before a commit: if this process was started under a lease (``HPCORCH_LEASE``), the
        lease must still name that holder and attempt. A rank of an attempt that was replaced
        (a node cut off, then requeued; a launcher killed, then started again) stops here
        instead of committing beside the new one."""
        mine = os.environ.get(LEASE_ENV)
        current = self.lease()
        if mine and current is not None and current.token() != mine:
            raise RunDirBusy(f"run directory {self.root} now belongs to {current.names()} (attempt "
                             f"{current.attempt}), not to this process's {mine}; not committing")

    def claim(self, lease: Lease, is_live: Callable[[Lease], bool]) -> None:
        """:meth:`ensure_free`, then :meth:`take`."""
        self.ensure_free(lease, is_live)
        self.take(lease)
