"""The local agent (``python -m hpcorch.remote.agent``): one authenticated SSH connection shared
by every hpcorch command of a working session, so 2FA is answered once.

It listens on a Unix socket under ``/tmp/hpcorch-<uid>/`` (folder 0700, socket 0600, and the
peer's uid checked with SO_PEERCRED); a short hash of the target and of the hpcorch home names
the socket (Unix socket paths are limited to 108 bytes). A client sends one JSON request line:

    {"op": "exec", "cmd": "..."}   then stdin frames; the agent streams stdout/stderr, then exit
    {"op": "info"} | {"op": "fact", "name": N[, "value": V]} | {"op": "stop"}

and then framed messages: a 1-byte type, a 4-byte big-endian length, the payload.

Start-up (``serve``): the starting client writes the job (target, persist, accept_new) as one
JSON line on stdin; prompts come back as JSON lines on stdout and are answered on stdin; then
``{"ready": ...}`` or ``{"error": ...}``, and the pipes close. Answers are never logged.
The agent ends after ``persist_s`` without a command, or when the connection dies.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from hpcorch.errors import RemoteError

log = logging.getLogger("hpcorch.remote.agent")

# Frame types. Client -> agent: stdin data, stdin EOF. Agent -> client: the rest.
STDIN, STDIN_EOF = b"i", b"e"
STDOUT, STDERR, EXIT, REPLY, ERROR = b"o", b"r", b"x", b"j", b"E"
_HEADER = struct.Struct(">cI")
CHUNK = 32768


# -- framing (shared with the client) ----------------------------------------------------------

def send_frame(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    """Send one frame: type, length, payload."""
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """One frame (type, payload), or None when the peer closed the socket."""
    head = _recv_exact(sock, _HEADER.size)
    if head is None:
        return None
    kind, length = _HEADER.unpack(head)
    payload = _recv_exact(sock, length) if length else b""
    return None if payload is None else (kind, payload)


def send_json(sock: socket.socket, kind: bytes, obj) -> None:
    send_frame(sock, kind, json.dumps(obj).encode())


# -- where an agent lives ----------------------------------------------------------------------

def socket_dir() -> Path:
    """``/tmp/hpcorch-<uid>``, created 0700; refused when another user owns it or it is a link."""
    path = Path(f"/tmp/hpcorch-{os.getuid()}")
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RemoteError(f"{path} is not a private folder of yours (owner, mode or a link): remove it and retry")
    return path


def agent_id(target_key: str, home: str) -> str:
    """A short stable id of (target, hpcorch home): tests with their own home get their own agent."""
    return hashlib.sha256(f"{target_key}\0{home}".encode()).hexdigest()[:12]


def socket_path(aid: str) -> Path:
    return socket_dir() / f"{aid}.sock"


def log_path(aid: str) -> Path:
    from hpcorch.spec.catalog import hpcorch_home

    return hpcorch_home() / "remote" / f"agent-{aid}.log"


# -- the server --------------------------------------------------------------------------------

class Agent:
    """Serves one Connection to the clients of one Unix socket."""

    def __init__(self, conn, job: dict, sock_path: Path):
        self.conn, self.job, self.sock_path = conn, job, sock_path
        self.persist_s = int(job["persist_s"])
        self.since = time.time()
        self.last = time.monotonic()
        self.active = 0
        self.commands = 0
        self.bytes_in = self.bytes_out = 0
        self.facts: dict[str, object] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.ino = os.stat(sock_path).st_ino

    def info(self) -> dict:
        with self.lock:
            idle = 0.0 if self.active else time.monotonic() - self.last
            return {"host": self.conn.target.display, "key": self.conn.target.key, "pid": os.getpid(),
                    "since": self.since, "idle_s": round(idle, 1), "persist_s": self.persist_s,
                    "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "commands": self.commands,
                    "active": self.active, "home": self.job["home"], "socket": str(self.sock_path),
                    "jumps": [j.display for j in self.conn.target.jumps], "log": self.job.get("log")}

    def unlink(self) -> None:
        """Remove our socket (only ours: a successor may have bound the same path)."""
        try:
            if os.stat(self.sock_path).st_ino == self.ino:
                self.sock_path.unlink()
        except FileNotFoundError:
            pass

    def serve_forever(self, listener: socket.socket) -> None:
        """Serve until idle, stopped or disconnected; then serve the clients already queued (they
        connected before the socket went away and must not see a reset)."""
        try:
            self._loop(listener)
        finally:
            self.unlink()
            listener.setblocking(False)
            while True:
                try:
                    client, _ = listener.accept()
                except (BlockingIOError, OSError):
                    break
                client.setblocking(True)
                self._client(client)

    def _loop(self, listener: socket.socket) -> None:
        listener.settimeout(1.0)
        while not self.stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                pass
            else:
                threading.Thread(target=self._client, args=(client,), daemon=True).start()
            if not self.conn.alive():
                log.warning("the connection to %s died; exiting", self.conn.target.display)
                break
            with self.lock:
                idle = self.active == 0 and time.monotonic() - self.last > self.persist_s
            if idle:
                log.info("idle for %d s; exiting", self.persist_s)
                break

    def _client(self, client: socket.socket) -> None:
        with client:
            try:
                creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, uid, _gid = struct.unpack("3i", creds)
                if uid != os.getuid():
                    log.warning("refused a client of uid %d (pid %d)", uid, pid)
                    return
                line = _read_line(client)
                if line is not None:  # a bare connect is a client checking that we are here
                    self._handle(client, json.loads(line))
            except (OSError, ValueError) as exc:
                log.info("client dropped: %s", exc)

    def _handle(self, client: socket.socket, request: dict) -> None:
        op = request.get("op")
        if op == "info":
            send_json(client, REPLY, self.info())
        elif op == "fact":
            with self.lock:
                if "value" in request:
                    self.facts[request["name"]] = request["value"]
                send_json(client, REPLY, {"value": self.facts.get(request["name"])})
        elif op == "stop":
            log.info("stop requested")
            self.unlink()  # from now on, a new client starts a new agent
            send_json(client, REPLY, {"stopped": os.getpid()})
            self.stopping.set()
        elif op == "exec":
            self._exec(client, request["cmd"])
        else:
            send_frame(client, ERROR, f"unknown request {op!r}".encode())

    def _exec(self, client: socket.socket, cmd: str) -> None:
        import select

        with self.lock:
            self.active += 1
            self.commands += 1
            self.last = time.monotonic()
        counts = {"in": 0, "out": 0}
        try:
            try:
                chan = self.conn.transport.open_session(timeout=30)
                chan.exec_command(cmd)
            except Exception as exc:  # paramiko raises SSHException, EOFError, OSError here
                send_frame(client, ERROR, f"{self.conn.target.display}: could not start a command ({exc})".encode())
                return
            # The command line is logged (it holds paths and hpcorch arguments, never secrets).
            log.info("exec %s", cmd[:300])
            feeder = threading.Thread(target=self._feed, args=(client, chan, counts), daemon=True)
            feeder.start()
            while True:
                select.select([chan], [], [], 1.0)
                got = False
                while chan.recv_ready():
                    data = chan.recv(CHUNK)
                    counts["in"] += len(data)
                    send_frame(client, STDOUT, data)
                    got = True
                while chan.recv_stderr_ready():
                    data = chan.recv_stderr(CHUNK)
                    counts["in"] += len(data)
                    send_frame(client, STDERR, data)
                    got = True
                if not got and (chan.eof_received or chan.closed) and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
                if not self.conn.transport.is_active():
                    break
            code = chan.recv_exit_status() if self.conn.transport.is_active() else -1
            chan.close()
            send_json(client, EXIT, {"code": code, "bytes_in": counts["in"], "bytes_out": counts["out"]})
        except OSError as exc:
            log.info("client went away during a command: %s", exc)
            try:
                chan.close()
            except Exception:
                pass
        finally:
            with self.lock:
                self.active -= 1
                self.bytes_in += counts["in"]
                self.bytes_out += counts["out"]
                self.last = time.monotonic()

    def _feed(self, client: socket.socket, chan, counts: dict) -> None:
        """Client stdin frames -> the channel; a closed client closes the channel."""
        try:
            while True:
                frame = recv_frame(client)
                if frame is None:
                    chan.close()
                    return
                kind, payload = frame
                if kind == STDIN:
                    chan.sendall(payload)
                    counts["out"] += len(payload)
                elif kind == STDIN_EOF:
                    chan.shutdown_write()
                    return
        except OSError:
            chan.close()


def _read_line(sock: socket.socket, limit: int = 1 << 20) -> str | None:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return None
        if len(buf) > limit:
            raise ValueError("request line too long")
        buf += chunk
    return buf.decode()


# -- start-up ----------------------------------------------------------------------------------

class _PipePrompter:
    """Relays prompts to the client that started us; the answers stay in memory only."""

    def __init__(self, out, inp):
        self.out, self.inp = out, inp

    def __call__(self, text: str, echo: bool) -> str:
        self.out.write(json.dumps({"prompt": text, "echo": echo}) + "\n")
        self.out.flush()
        line = self.inp.readline()
        if not line:
            last = (text.strip().splitlines() or ["a prompt"])[-1]
            raise RemoteError(f"authentication needs an answer to {last!r}; run in a terminal")
        answer = json.loads(line)
        if "error" in answer:
            raise RemoteError(answer["error"])
        return answer["answer"]


def serve(stdin=sys.stdin, stdout=sys.stdout) -> int:
    """The agent's main: read the job, connect (relaying prompts), listen, serve until idle."""
    from hpcorch.remote.connect import open_transport
    from hpcorch.remote.sshconfig import Target

    job = json.loads(stdin.readline())
    target = Target.from_dict(job["target"])
    aid = job["id"]
    logging.basicConfig(filename=job["log"], level=logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    log.info("starting for %s (id %s)", target.key, aid)

    def reply(obj) -> None:
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    try:
        conn = open_transport(target, _PipePrompter(stdout, stdin), job.get("accept_new", False),
                              timeout=job.get("timeout", 10))
    except RemoteError as exc:
        log.info("connect failed: %s", exc)
        reply({"error": str(exc)})
        return 1
    except Exception as exc:  # anything unforeseen still ends as one line at the client
        log.exception("connect failed")
        reply({"error": f"{target.display}: connection failed ({type(exc).__name__}: {exc})"})
        return 1
    path = socket_path(aid)
    path.unlink(missing_ok=True)  # stale: the client holds the start lock and found no agent
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(16)
    agent = Agent(conn, job, path)
    reply({"ready": str(path), "pid": os.getpid()})
    # Nobody reads our pipes after this: leave them, so the starting client can exit.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    try:
        agent.serve_forever(listener)
    finally:
        listener.close()
        conn.close()
        log.info("exited (%d commands, %d bytes in, %d bytes out)", agent.commands, agent.bytes_in, agent.bytes_out)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
