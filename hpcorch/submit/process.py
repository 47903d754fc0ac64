"""The process backend: ``hpcorch train``'s ranks, started on this machine without submitit.
Its holder is the launching process (the run directory's lease names its pid and start time),
so it is asked after, and cancelled, as a local controller is; it is never submitted through
submitit and never requeued (it exits ``protocol.CHECKPOINTED``: run it again to resume)."""
from __future__ import annotations

from hpcorch.submit.local import LocalBackend


class ProcessBackend(LocalBackend):
    kind = "process"

    def submit(self, plan, script: str):
        return super(LocalBackend, self).submit(plan, script)  # Backend's: not through submitit
