"""The local backend: submitit's local controller runs the ranks on this machine. The job id is
the controller's pid; whether the job runs is whether that process (the same one: its start
time is recorded) is alive, and a cancel is a SIGTERM to it (it forwards it to every rank)."""
from __future__ import annotations

import os

from hpcorch.state import jobstate
from hpcorch.state.registry import Entry
from hpcorch.submit.backend import Backend


class LocalBackend(Backend):
    kind = "local"

    def submit(self, plan, script: str):
        from hpcorch.submit.executor import start, submit_local

        return start(plan, script, submit_local)

    def states(self, entries: list[Entry]) -> dict[int, str]:
        return {e.key: jobstate.local_state(e) for e in entries}

    def failure(self, entry: Entry, state: str) -> str | None:
        """No recovery step runs here to record failures: a stopped job's ranks killed outright
        are told from submitit's own files (:func:`hpcorch.observe.status.local_failure`)."""
        from hpcorch.observe import status as observe

        if state != "STOPPED":
            return super().failure(entry, state)
        return observe.local_failure(entry) or super().failure(entry, state)

    def cancel(self, entry: Entry) -> str:
        if not jobstate.local_controller_alive(entry):
            return f"job {entry.job_id} is not running; nothing to cancel"
        import signal  # here: its enums are a millisecond of every cold command that imports backends

        os.kill(int(entry.job_id), signal.SIGTERM)
        return f"cancel sent to job {entry.job_id}"
