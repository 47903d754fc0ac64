"""The SSH connection to a profile's login node as a Python API: connect, list the running
connection agents, disconnect, run a command. Nothing here imports paramiko (only the agent
process does)."""
from __future__ import annotations

from collections.abc import Callable

Output = Callable[[bytes], None]


def connect(profile: str, accept_new: bool = False) -> dict:
    """Connect to ``profile``'s login node (or reuse the agent's connection) and check the hpcorch
    version there: host, version, python, and the idle timeout ``persist_s``."""
    from hpcorch.remote.client import Session
    from hpcorch.remote.ops import login_of

    login = login_of(profile)
    session = Session.open(login, accept_new=accept_new)
    version = session.check_version()
    return {"host": session.host, "version": version, "python": session.python, "persist_s": login.persist_s}


def agents(profile: str | None = None) -> list[dict]:
    """The running connection agents (all, or ``profile``'s): host, pid, since, idle, bytes, commands."""
    from hpcorch.remote.client import agents as running

    rows = running()
    if profile is None:
        return rows
    from hpcorch.remote.ops import login_of
    from hpcorch.remote.sshconfig import resolve

    key = resolve(login_of(profile)).key
    return [r for r in rows if r["key"] == key]


def disconnect(profile: str) -> bool:
    """Close the connection to ``profile``'s login node; False when none was open."""
    from hpcorch.remote.client import disconnect as close
    from hpcorch.remote.ops import login_of

    return close(login_of(profile))


def disconnect_all() -> list[str]:
    """Stop every connection agent; the hosts whose connection closed (empty: none was open)."""
    from hpcorch.remote.client import agents as running
    from hpcorch.remote.client import stop

    return [r["host"] for r in running() if stop(r)]


def run(profile: str, argv: list[str], cwd: str | None, on_stdout: Output, on_stderr: Output) -> int:
    """Run ``argv`` on ``profile``'s login node over the shared connection, streaming its output
    to the callbacks; its exit status."""
    from hpcorch.remote.client import Session
    from hpcorch.remote.ops import login_of

    session = Session.open(login_of(profile))
    return session.run(list(argv), stdin=None, cwd=cwd, on_stdout=on_stdout, on_stderr=on_stderr).code
