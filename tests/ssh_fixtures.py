"""Fixtures for remote operation over SSH: a real sshd (one per test session) and an isolated
client side (its own HPCORCH_HOME, ssh config and known_hosts; no ssh-agent), so the user's
``~/.ssh`` is never read nor written. Agents a test starts are stopped by pid afterwards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd import SSHServer, ensure_sshd

REPO = Path(__file__).resolve().parent.parent
LOCAL_PROFILE = (REPO / "hpcorch" / "profiles" / "local.yaml").read_text()


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory):
    """Start OpenSSH sshd servers (``factory(name, env=...)``); all stop at the session's end.
    Skips the test when sshd is missing and cannot be installed."""
    why = ensure_sshd()
    if why:
        pytest.skip(why)
    servers: list[SSHServer] = []

    def factory(name: str = "sshd", env: dict[str, str] | None = None) -> SSHServer:
        base = {"PYTHONPATH": str(REPO)}
        server = SSHServer(tmp_path_factory.mktemp(name), env={**base, **(env or {})}, name=name).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def sshd(sshd_factory) -> SSHServer:
    """The shared loopback sshd (remote commands see PYTHONPATH = this checkout)."""
    return sshd_factory("sshd")


class RemoteClient:
    """One isolated laptop: HPCORCH_HOME, ssh config and known_hosts under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        (self.home / "profiles").mkdir(parents=True)
        self.ssh_config = root / "ssh_config"
        self.ssh_config.write_text("")
        self.known_hosts = root / "known_hosts"
        self.env = {**os.environ, "HPCORCH_HOME": str(self.home), "HPCORCH_SSH_CONFIG": str(self.ssh_config),
                    "PYTHONPATH": str(REPO)}
        self.env.pop("SSH_AUTH_SOCK", None)
        self.env.pop("HPCORCH_PROFILE", None)

    def add_host(self, server, alias: str, trust: bool = True, key: Path | None = None, extra: str = "") -> None:
        """Add a Host block for ``server`` (and its host key to known_hosts when ``trust``)."""
        with open(self.ssh_config, "a") as out:
            out.write(server.ssh_config(alias, self.known_hosts, key=key, extra=extra))
        if trust:
            with open(self.known_hosts, "a") as out:
                out.write(server.known_hosts_line())

    def profile(self, name: str, login: str) -> str:
        """Write profile ``name`` (this machine's, plus the ``login`` block); return its name."""
        text = LOCAL_PROFILE.replace("name: local", f"name: {name}") + login
        (self.home / "profiles" / f"{name}.yaml").write_text(text)
        return name

    def cli(self, *args, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``hpcorch ARGS`` without a terminal (a new session: /dev/tty cannot be opened, so
        prompts read stdin, and no stdin means no answer)."""
        return subprocess.run([sys.executable, "-m", "hpcorch", *map(str, args)], env=self.env, cwd=self.root,
                              input=input if input is not None else "", capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)

    def agents(self) -> list[dict]:
        out = self.cli("remote", "status", "--json")
        return json.loads(out.stdout) if out.returncode == 0 else []

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.home / "remote").glob("agent-*.log"))

    def cleanup(self) -> None:
        """Stop this laptop's agents: politely, then by pid."""
        pids = [a["pid"] for a in self.agents()]
        self.cli("remote", "disconnect")
        deadline = time.monotonic() + 5
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of this process that exited stays a zombie until reaped; treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def laptop(tmp_path):
    """An isolated client side; its agents are stopped after the test."""
    client = RemoteClient(tmp_path)
    yield client
    client.cleanup()
