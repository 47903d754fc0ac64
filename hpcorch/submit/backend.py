"""One interface for every scheduler kind a job can run under, as submitit has one executor and
job class per backend (``core/core.py`` + ``slurm/slurm.py`` + ``local/local.py``).

A :class:`Backend` knows its kind's answers: how to submit a plan, the states of many jobs at
once, how to cancel, follow logs, resume or requeue a job. The service picks a job's backend
once (``service.backend_for``) and calls it, so no operation branches on the kind. The
implementations: :class:`~hpcorch.submit.slurm.SlurmBackend`, :class:`~hpcorch.submit.local.LocalBackend`
(submitit's local controller), :class:`~hpcorch.submit.process.ProcessBackend` (``hpcorch
train``) and :class:`~hpcorch.remote.backend.RemoteBackend` (a login node over SSH).

What every local kind shares (the run directory is on this machine: its logs and records
answer ``status`` and ``logs``) is written here once; a backend overrides only its difference.
Nothing here imports submitit or torch.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hpcorch.errors import HpcorchError
from hpcorch.state import jobstate
from hpcorch.state.registry import Entry, Registry
from hpcorch.state.rundir import RunDir
from hpcorch.util.poll import Backoff

Write = Callable[[str], None]

# How long a follower waits on a scheduler that answers nothing (UNKNOWN) before giving up.
UNKNOWN_PATIENCE_S = 300.0


class Unsupported(HpcorchError):
    """The job's kind cannot do what was asked (one line, exit 2)."""


@dataclass
class Submission:
    """A job just submitted: its registry entry and submitit's job handle."""

    entry: Entry
    job: object  # submitit.Job (None for a job submitted on a login node)

    def describe(self) -> str:
        e = self.entry
        where = f"{e.profile} ({e.remote_ref.host})" if e.remote else e.profile
        return f"submitted job {e.job_id} (hpcorch #{e.key}, {e.name}) on {where}; run dir {e.run_dir}"


@dataclass
class Resume:
    """What ``hpcorch resume`` asked, for :meth:`Backend.resume`."""

    exclude: str | None                              # --exclude as typed (a host list)
    asked: set[str]                                  # the same, expanded (checked before anything)
    allow_config_change: bool
    registry: Registry
    resubmit: Callable[[list[str]], Submission]      # plan the job again with these overrides, submit


class Backend(ABC):
    """One scheduler kind: submit, states of many jobs, cancel, logs, resume, requeue."""

    kind: ClassVar[str]
    has_nodes: ClassVar[bool] = False  # jobs land on cluster nodes (which a plan may exclude or quarantine)

    # ----- what each kind must say ----------------------------------------------------------------
    @abstractmethod
    def states(self, entries: list[Entry]) -> dict[int, str]:
        """Each entry's current state (``RUNNING``, ``PENDING (Priority)``, ``UNKNOWN``, ...),
        keyed by registry number, asking the scheduler as few times as it can."""

    @abstractmethod
    def cancel(self, entry: Entry) -> str:
        """End the job (its ranks checkpoint on SIGTERM); returns what was done."""

    def submit(self, plan, script: str):
        """Hand ``plan`` (its rendered ``script``) to the scheduler; returns submitit's Job."""
        raise Unsupported(f"a {self.kind} job is not submitted through submitit")

    def check(self, profile: str, script: str) -> str:
        """Ask the scheduler whether it would accept ``script`` (nothing is submitted)."""
        raise Unsupported(f"--check asks a Slurm cluster; profile {profile!r} has none")

    # ----- one job ----------------------------------------------------------------------------
    def state(self, entry: Entry) -> str:
        return self.states([entry])[entry.key]

    def rows(self, entries: list[Entry]) -> dict[int, dict]:
        """``hpcorch ls``'s ``state`` and ``goodput`` of each entry (see
        :func:`hpcorch.observe.goodput.goodput_of`; an ended job's figure is kept), and its
        ``host`` where that is not this machine."""
        from hpcorch.observe.goodput import goodput_of

        current = self.states(entries)
        ended = {key for key, state in current.items() if jobstate.has_ended(state)}
        good = goodput_of(entries, ended, self.accounting)
        return {e.key: {"state": current[e.key], "goodput": good[e.key]} for e in entries}

    # Where the allocated time is accounted (sacct for Slurm): a function of many entries, see
    # :data:`hpcorch.observe.goodput.Accounting`. None: the run directory's own records answer.
    accounting: Callable[[list[Entry]], dict[str, list[dict[str, str]]]] | None = None

    def status(self, entry: Entry) -> dict:
        """State, progress from the run directory, advice, warnings and goodput."""
        from hpcorch.observe import status as observe  # git and manifests: not on a dry run's path
        from hpcorch.observe.goodput import goodput_dict
        from hpcorch.observe.manifest import differences

        state = self.state(entry)
        return {"key": entry.key, "job_id": entry.job_id, "name": entry.name, "state": state,
                **observe.progress(entry), "failure": self.failure(entry, state),
                "next": observe.advice(entry, state), "run_dir": entry.run_dir,
                "warnings": differences(RunDir.open(entry.run_dir)),
                "goodput": goodput_dict(entry, running=not jobstate.has_ended(state))}

    def failure(self, entry: Entry, state: str) -> str | None:
        """The job's last failure as one line (what failed, where, the likely cause), or None."""
        from hpcorch.observe import status as observe

        return observe.last_failure(RunDir.open(entry.run_dir))

    # ----- logs ---------------------------------------------------------------------------------
    def log_path(self, entry: Entry, rank: int = 0, stream: str = "out") -> Path:
        """Where rank ``rank``'s ``stream`` (out or err) is written."""
        return RunDir(entry.run_dir).rank_log(entry.job_id, rank, stream)

    def logs(self, entry: Entry, write: Write, rank: int = 0, stream: str = "out", follow: bool = False,
             show_submitit: bool = False) -> None:
        """Pass the log to ``write``; with ``follow`` as it grows, until the job ends."""
        from hpcorch.observe import status as observe
        path = self.log_path(entry, rank, stream)
        if not path.exists() and not follow:
            raise HpcorchError(f"no log yet at {path}")
        done = self.ended_or_given_up(entry) if follow else (lambda: True)
        observe.follow(path, done, write, backoff=self.backoff(), show_submitit=show_submitit)

    def wait(self, entry: Entry, write: Write, show_submitit: bool = False) -> str:
        """Follow rank 0's log until the job ends; returns its final state."""
        self.logs(entry, write, follow=True, show_submitit=show_submitit)
        return self.state(entry)

    def backoff(self) -> Backoff:
        """How often a follower may ask the scheduler (a local process table: twice a second)."""
        return Backoff(0.5, 1.0, 0.5)

    def ended_or_given_up(self, entry: Entry, patience_s: float | None = None) -> Callable[[], bool]:
        """A ``done`` test for followers: the job has ended. A scheduler that cannot say anything
        (UNKNOWN) for ``patience_s`` in a row ends the following with an error, not a hang."""
        patience = UNKNOWN_PATIENCE_S if patience_s is None else patience_s
        unknown_since: list[float] = []

        def done() -> bool:
            state = self.state(entry)
            if jobstate.base_state(state) != "UNKNOWN":
                unknown_since.clear()
                return jobstate.has_ended(state)
            unknown_since[:] = unknown_since or [time.monotonic()]
            if time.monotonic() - unknown_since[0] > patience:
                raise HpcorchError(f"job {entry.job_id}: the scheduler has not answered for {patience:.0f} s "
                                   f"(state UNKNOWN); stopped following")
            return False

        return done

    # ----- after the job -------------------------------------------------------------------------
    def resume(self, entry: Entry, request: Resume) -> Submission:
        """Submit the job again into its run directory (the ranks resume from the latest
        committed checkpoint). Refused while it is pending, running or requeued, and once it
        completed: there is nothing to resume."""
        state = self.state(entry)
        if jobstate.base_state(state) == "COMPLETED":
            raise HpcorchError(f"job {entry.job_id} (hpcorch #{entry.key}) completed; nothing to resume")
        if jobstate.base_state(state) == "COMPLETING":  # ending, or Slurm is requeuing it: a cancel would lose that
            raise HpcorchError(f"job {entry.job_id} (hpcorch #{entry.key}) is COMPLETING: its processes are ending "
                               f"and Slurm may be requeuing it; nothing to resume yet (hpcorch status "
                               f"{entry.key} again in a minute)")
        if not jobstate.has_ended(state):
            from hpcorch.observe import status as observe

            next_step = observe.advice(entry, state) or "it is still live"
            raise HpcorchError(f"job {entry.job_id} (hpcorch #{entry.key}) is {state}; nothing to resume "
                               f"(next: {next_step}; cancel it first to start it anew)")
        return request.resubmit(self.resume_overrides(entry, request.asked))

    def resume_overrides(self, entry: Entry, asked: set[str]) -> list[str]:
        """The job-file overrides a resubmission of ``entry`` needs (nodes to leave out); ``asked``:
        the nodes the user excludes. Nothing by default: only a cluster has nodes to avoid."""
        return []

    def failed_nodes(self, entry: Entry) -> list[str]:
        """Nodes that ran the job and are now unhealthy; none where there is no cluster."""
        return []

    def time_left(self, entry: Entry) -> int | None:
        """Seconds until the job's time limit, None when unknown or unlimited."""
        return None

    def requeue(self, entry: Entry, exclude: list[str] = ()) -> None:
        """End the running job and queue it again, without the nodes ``exclude``."""
        raise Unsupported(f"job {entry.job_id} (hpcorch #{entry.key}) is a {self.kind} job: only a "
                          f"Slurm job is requeued by hand")

    def pull(self, entry: Entry, into=None):
        """Fetch a remote run directory's records here; a local one is already here."""
        raise HpcorchError(f"job {entry.job_id} (hpcorch #{entry.key}) ran from this machine; its run "
                           f"directory is {entry.run_dir}: nothing to pull")
