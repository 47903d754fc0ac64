"""The API every other module uses to run commands on the login node.

A ``Session`` talks to the local agent (``hpcorch.remote.agent``) over its Unix socket and starts
it when there is none, relaying the agent's authentication prompts (key passphrase, 2FA code) to
the user once. This module never imports paramiko: only the agent process does.
"""
from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hpcorch.errors import RemoteError
from hpcorch.remote import agent as _agent
from hpcorch.remote.sshconfig import Target, resolve
from hpcorch.spec.profile import Login

log = logging.getLogger(__name__)

Prompter = Callable[[str, bool], str]      # (prompt text, echo) -> answer

# The start-up includes a TCP connect and an SSH handshake per hop (10 s each at most) and the
# user's time to answer prompts; this only guards against an agent that hangs without a word.
START_TIMEOUT_S = 600


@dataclass
class Completed:
    """What a remote command did."""

    code: int
    stdout: bytes          # b"" when on_stdout was given
    stderr: bytes          # b"" when on_stderr was given
    bytes_in: int          # channel payload bytes received for this command
    bytes_out: int         # channel payload bytes sent (stdin)


def default_prompter(text: str, echo: bool) -> str:
    """Ask on the terminal (/dev/tty, hidden input unless ``echo``), else read a line of stdin
    (so a script can pipe a one-time code in); raise RemoteError when there is no answer."""
    try:
        tty = open("/dev/tty", "r+")  # noqa: SIM115 (closed by the `with` below; only the open may fail)
    except OSError:
        tty = None
    if tty is not None:
        with tty:
            if echo:
                tty.write(text)
                tty.flush()
                line = tty.readline()
            else:
                line = getpass.getpass(text, stream=tty) + "\n"
    else:
        sys.stderr.write(text if text.endswith((" ", "\n")) else text + " ")
        sys.stderr.flush()
        line = sys.stdin.readline() if sys.stdin is not None and not sys.stdin.closed else ""
        sys.stderr.write("\n")
    if not line:
        raise RemoteError(no_answer(text))
    return line.rstrip("\r\n")


def no_answer(prompt: str) -> str:
    """The one-line message for a prompt nobody could answer (its last line names the question)."""
    last = (prompt.strip().splitlines() or ["a prompt"])[-1]
    return f"authentication needs an answer to {last!r}; run in a terminal"


def remote_command(argv: list[str] | str, cwd: str | None = None) -> str:
    """The shell line running ``argv`` (in ``cwd``): every word quoted, except that a leading
    ``~/`` stays bare so the remote shell expands it to the remote home. A string is taken as
    a shell line already."""
    line = argv if isinstance(argv, str) else " ".join(_word(a) for a in argv)
    return f"cd {_word(cwd)} && {line}" if cwd else line


def _word(word: str) -> str:
    if word == "~":
        return word
    if word.startswith("~/"):
        return "~/" + shlex.quote(word[2:]) if word[2:] else "~/"
    return shlex.quote(word)


def _connect(path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None


def _home() -> str:
    from hpcorch.spec.catalog import hpcorch_home

    return str(hpcorch_home().resolve())


class Session:
    """A working session on one login node, through the local agent."""

    def __init__(self, login: Login, target: Target, prompter: Prompter | None):
        self.login, self.target = login, target
        self.prompter = prompter or default_prompter
        self.host = target.display
        self.python = login.python
        self.workdir = login.workdir
        self.id = _agent.agent_id(target.key, _home())
        self.socket = _agent.socket_path(self.id)

    @classmethod
    def open(cls, login: Login, accept_new: bool = False, prompter: Prompter | None = None,
             start: bool = True) -> Session:
        """A session through the running agent for ``login``, starting one (and authenticating,
        prompts relayed through ``prompter``) when there is none and ``start``."""
        session = cls(login, resolve(login), prompter)
        session._ensure(accept_new, start)
        return session

    def _ensure(self, accept_new: bool = False, start: bool = True) -> None:
        sock = _connect(self.socket)
        if sock is not None:
            sock.close()
            return
        if not start:
            raise RemoteError(f"not connected to {self.host}: run `hpcorch remote connect PROFILE`")
        # The lock lives in the hpcorch home (as the id includes the home), not in /tmp: nothing
        # accumulates in the shared folder.
        lock_path = _agent.log_path(self.id).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Concurrent first calls: one starts the agent, the others wait here and then find it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            sock = _connect(self.socket)
            if sock is not None:
                sock.close()
                return
            self._start(accept_new)
        finally:
            os.close(fd)

    def _start(self, accept_new: bool) -> None:
        log_file = _agent.log_path(self.id)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        job = {"target": self.target.to_dict(), "id": self.id, "persist_s": self.login.persist_s,
               "accept_new": accept_new, "home": _home(), "log": str(log_file)}
        # The agent runs this very hpcorch (its folder first on the path) from "/", so it pins
        # no working folder of the user's while it lives on.
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join([package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        with open(log_file, "a") as err:
            proc = subprocess.Popen([sys.executable, "-m", "hpcorch.remote.agent"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
                                    close_fds=True, cwd="/", env={**os.environ, "PYTHONPATH": path})
        timer = threading.Timer(START_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                msg = json.loads(line)
                if "prompt" in msg:
                    try:
                        answer = {"answer": self.prompter(msg["prompt"], bool(msg.get("echo")))}
                    except RemoteError as exc:
                        answer = {"error": str(exc)}
                    proc.stdin.write(json.dumps(answer) + "\n")
                    proc.stdin.flush()
                elif "ready" in msg:
                    log.info("agent %d ready for %s", msg["pid"], self.host)
                    return
                elif "error" in msg:
                    proc.wait(timeout=30)
                    raise RemoteError(msg["error"])
            proc.wait(timeout=30)
            raise RemoteError(f"the connection agent for {self.host} ended without a word "
                              f"(exit {proc.returncode}); see {log_file}")
        finally:
            timer.cancel()
            proc.stdin.close()
            proc.stdout.close()

    def _request(self, request: dict) -> socket.socket:
        sock = _connect(self.socket)
        if sock is None:
            # The agent ended (idle, or its connection died): the next command starts a new one.
            self._ensure()
            sock = _connect(self.socket)
            if sock is None:
                raise RemoteError(f"the connection agent for {self.host} is not answering; "
                                  "run `hpcorch remote disconnect` and retry")
        sock.sendall((json.dumps(request) + "\n").encode())
        return sock

    def _ask(self, request: dict) -> dict:
        with self._request(request) as sock:
            frame = _agent.recv_frame(sock)
        if frame is None:
            raise RemoteError(f"the connection agent for {self.host} closed the request; see its log")
        kind, payload = frame
        if kind == _agent.ERROR:
            raise RemoteError(payload.decode(errors="replace"))
        return json.loads(payload)

    def run(self, argv: list[str] | str, stdin: bytes | BinaryIO | None = None,
            on_stdout: Callable[[bytes], None] | None = None,
            on_stderr: Callable[[bytes], None] | None = None,
            cwd: str | None = None) -> Completed:
        """Run ``argv`` (a list, quoted by :func:`remote_command`, or a ready shell line) on the
        login node; stream ``stdin`` to it; return its exit code and output (or hand output to
        the callbacks as it arrives)."""
        cmd = remote_command(argv if isinstance(argv, str) else list(argv), cwd)
        sock = self._request({"op": "exec", "cmd": cmd})
        feeder = threading.Thread(target=_feed, args=(sock, stdin), daemon=True)
        feeder.start()
        out, err = bytearray(), bytearray()
        try:
            while True:
                frame = _agent.recv_frame(sock)
                if frame is None:
                    raise RemoteError(f"the connection to {self.host} ended during `{cmd[:80]}`; retry")
                kind, payload = frame
                if kind == _agent.STDOUT:
                    on_stdout(payload) if on_stdout else out.extend(payload)
                elif kind == _agent.STDERR:
                    on_stderr(payload) if on_stderr else err.extend(payload)
                elif kind == _agent.EXIT:
                    done = json.loads(payload)
                    return Completed(done["code"], bytes(out), bytes(err), done["bytes_in"], done["bytes_out"])
                elif kind == _agent.ERROR:
                    raise RemoteError(payload.decode(errors="replace"))
        finally:
            sock.close()

    def check_version(self) -> str:
        """The login node's hpcorch version for ``login.python`` (asked once per agent); raise
        RemoteError when python or hpcorch is missing there, or its major.minor differs."""
        from hpcorch import __version__

        name = f"version:{self.python}"
        known = self._ask({"op": "fact", "name": name})["value"]
        if known:
            return known
        done = self.run([self.python, "-m", "hpcorch", "--version"])
        text = (done.stdout + done.stderr).decode(errors="replace")
        if done.code == 127:
            raise RemoteError(f"python not found on {self.host}: `{self.python}` does not run there; "
                              "set login.python to the interpreter (or venv) where hpcorch is installed")
        if "No module named hpcorch" in text:
            raise RemoteError(f"hpcorch is not installed for {self.python} on {self.host}: "
                              f"run `pip install hpcorch=={__version__}` there, or set login.python")
        found = re.search(r"version (\S+)", done.stdout.decode(errors="replace"))
        if done.code != 0 or not found:
            last = (text.strip().splitlines() or ["no output"])[-1][:200]
            raise RemoteError(f"`{self.python} -m hpcorch --version` failed on {self.host} "
                              f"(exit {done.code}: {last})")
        remote = found.group(1)
        if remote.split(".")[:2] != __version__.split(".")[:2]:
            raise RemoteError(f"{self.host} has hpcorch {remote}, this machine {__version__}: "
                              f"install the same version (`pip install hpcorch=={__version__}` there or here)")
        self._ask({"op": "fact", "name": name, "value": remote})
        return remote

    def info(self) -> dict:
        """The agent's figures: host, pid, since, idle_s, persist_s, bytes_in, bytes_out, commands."""
        return self._ask({"op": "info"})


def _feed(sock: socket.socket, stdin: bytes | BinaryIO | None) -> None:
    """Stream ``stdin`` to the agent in its own thread (output is read meanwhile: no deadlock)."""
    try:
        if isinstance(stdin, (bytes, bytearray)):
            for i in range(0, len(stdin), _agent.CHUNK):
                _agent.send_frame(sock, _agent.STDIN, bytes(stdin[i:i + _agent.CHUNK]))
        elif stdin is not None:
            while chunk := stdin.read(_agent.CHUNK):
                _agent.send_frame(sock, _agent.STDIN, chunk)
        _agent.send_frame(sock, _agent.STDIN_EOF)
    except OSError:
        pass  # the command ended or the agent went away; run() reports it


def _ask_socket(path, request: dict) -> dict | None:
    sock = _connect(path)
    if sock is None:
        return None
    with sock:
        sock.settimeout(10)
        sock.sendall((json.dumps(request) + "\n").encode())
        frame = _agent.recv_frame(sock)
    return json.loads(frame[1]) if frame and frame[0] == _agent.REPLY else None


def disconnect(login: Login) -> bool:
    """Stop the agent for ``login`` (of this hpcorch home); False when none was running."""
    aid = _agent.agent_id(resolve(login).key, _home())
    return _ask_socket(_agent.socket_path(aid), {"op": "stop"}) is not None


def agents() -> list[dict]:
    """Info of every running agent of this user and hpcorch home. A socket nobody answers on (an
    agent killed with SIGKILL) is skipped; the next start for its target replaces it."""
    found = []
    home = _home()
    for path in sorted(_agent.socket_dir().glob("*.sock")):
        try:
            info = _ask_socket(path, {"op": "info"})
        except OSError:
            info = None
        if info is not None and info.get("home") == home:
            found.append(info)
    return found


def stop(info: dict) -> bool:
    """Stop the agent described by ``info`` (an item of :func:`agents`)."""
    return _ask_socket(info["socket"], {"op": "stop"}) is not None
