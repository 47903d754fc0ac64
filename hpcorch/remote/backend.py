"""The remote backend: a job recorded here that runs on a login node reached over SSH. Every
operation is the same ``hpcorch`` command run there (:mod:`hpcorch.remote.ops`): that login
node's own Slurm backend answers, and this side only forwards and records."""
from __future__ import annotations

from hpcorch.remote import ops
from hpcorch.state.registry import Entry
from hpcorch.submit.backend import Backend, Resume, Submission, Write


class RemoteBackend(Backend):
    kind = "remote"

    def states(self, entries: list[Entry]) -> dict[int, str]:
        return {key: row["state"] for key, row in self.rows(entries).items()}

    def rows(self, entries: list[Entry]) -> dict[int, dict]:
        """The login node's own ``ls`` figures (one call per login node), and which host it is."""
        hosts = {e.key: e.remote_ref.host for e in entries}
        return {key: {**row, "host": hosts[key]} for key, row in ops.rows(entries).items()}

    def status(self, entry: Entry) -> dict:
        return ops.status(entry)

    def cancel(self, entry: Entry) -> str:
        return ops.cancel(entry)

    def logs(self, entry: Entry, write: Write, rank: int = 0, stream: str = "out", follow: bool = False,
             show_submitit: bool = False) -> None:
        ops.logs(entry, write, rank=rank, stream=stream, follow=follow)

    def wait(self, entry: Entry, write: Write, show_submitit: bool = False) -> str:
        ops.logs(entry, write, follow=True)
        return ops.status(entry)["state"]

    def resume(self, entry: Entry, request: Resume) -> Submission:
        """The login node's hpcorch checks the job's state and its failed nodes itself."""
        return Submission(ops.resume(entry, request.exclude, request.allow_config_change, request.registry), None)

    def pull(self, entry: Entry, into=None):
        return ops.pull(entry, into)
