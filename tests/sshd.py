"""SSH servers for tests: OpenSSH's sshd on a private loopback port, and a paramiko server that
requires a key plus a one-time code (keyboard-interactive, like a 2FA login node).

``python tests/sshd.py otp ...`` runs the OtpServer in its own process (the tests start it so).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, passphrase: str = "", kind: str = "ed25519") -> Path:
    """A new key pair at ``path`` (and ``path``.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "hpcorch-test", "-f", str(path)],
                   check=True, timeout=60, stdin=subprocess.DEVNULL)
    return path


def fingerprint(pub: Path) -> str:
    """``SHA256:...`` of a public key file, as ssh-keygen prints it."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True,
                         check=True, timeout=30)
    return out.stdout.split()[1]


def ensure_sshd() -> str | None:
    """None when sshd is usable, else why not (installs openssh-server when root and missing)."""
    if not os.path.exists(SSHD):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return f"{SSHD} is missing and installing openssh-server needs root and apt-get"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "openssh-server"]):
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
            if done.returncode != 0:
                return f"`{' '.join(argv)}` failed: {done.stderr.strip()[-300:]}"
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    return None


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not answer: {log.read_text()[-2000:]}")


def stop_pid(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class SSHServer:
    """OpenSSH's sshd in the foreground (``-D -e``) on 127.0.0.1:``port`` with its own host key,
    a generated client key in authorized_keys and ``SetEnv`` for what remote commands need."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, name: str = "sshd"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.env = dict(env or {})
        self.port = free_port()
        self.user = os.environ.get("USER") or __import__("getpass").getuser()
        self.host_key = keygen(self.root / "host_key")
        self.client_key = keygen(self.root / "client_key")
        self.authorized = self.root / "authorized_keys"
        self.authorized.write_text((self.root / "client_key.pub").read_text())
        self.config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.root / "host_key.pub")

    def known_hosts_line(self, host: str = "127.0.0.1") -> str:
        kind, b64 = (self.root / "host_key.pub").read_text().split()[:2]
        return f"[{host}]:{self.port} {kind} {b64}\n"

    def write_config(self) -> None:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        self.config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"HostKey {self.host_key}", f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized}", "StrictModes no", "UsePAM no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "AllowTcpForwarding yes", "LogLevel VERBOSE",
            f"SetEnv {env}" if env else "", "Subsystem sftp internal-sftp", ""]))

    def start(self) -> SSHServer:
        self.write_config()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config), "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        stop_pid(self.proc)

    def accepted(self) -> int:
        """How many logins sshd accepted so far (from its log)."""
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def ssh_config(self, alias: str, known_hosts: Path, key: Path | None = None, extra: str = "") -> str:
        """A ``Host`` block reaching this server as ``alias``."""
        return (f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
                f"  IdentityFile {key or self.client_key}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n{extra}")

    def login_block(self, alias: str, python: str = sys.executable, persist: str = "0:10:00") -> str:
        """A profile's ``login:`` section for ``alias`` (an alias of :meth:`ssh_config`)."""
        return (f"login:\n  host: {alias}\n  python: {python}\n  persist: \"{persist}\"\n"
                f"  workdir: {self.root / 'work'}\n")


class OtpServer:
    """A paramiko SSH server (subprocess) requiring publickey AND a keyboard-interactive code;
    it runs exec requests with bash and counts interactive answers in ``count_file``."""

    def __init__(self, root: Path, authorized_pub: Path, code: str, env: dict[str, str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = self.root / "otp_host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f",
                        str(self.host_key)], check=True, timeout=60)
        self.authorized_pub, self.code = authorized_pub, code
        self.count_file = self.root / "interactive-auths"
        self.log = self.root / "otp.log"
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    def known_hosts_line(self) -> str:
        kind, b64 = (self.root / "otp_host_key.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}\n"

    def interactive_auths(self) -> int:
        return len(self.count_file.read_text().splitlines()) if self.count_file.exists() else 0

    def start(self) -> OtpServer:
        argv = [sys.executable, __file__, "otp", str(self.port), str(self.host_key), str(self.authorized_pub),
                str(self.count_file)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                                         env={**os.environ, **self.env})
        self.proc.stdin.write(self.code.encode() + b"\n")  # the code never appears on a command line
        self.proc.stdin.close()
        wait_port(self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        stop_pid(self.proc)


def _otp_main(port: int, host_key: str, authorized_pub: str, count_file: str) -> None:  # noqa: C901 (the server class and exec pump nest here to share its code and key)
    import threading

    import paramiko

    code = sys.stdin.readline().strip()
    allowed = Path(authorized_pub).read_text().split()[1]  # the public key's base64 blob
    hkey = paramiko.RSAKey.from_private_key_file(host_key)

    class Server(paramiko.ServerInterface):
        def __init__(self):
            self.key_ok = False
            self.exec_cmd: bytes | None = None
            self.ready = threading.Event()

        def get_allowed_auths(self, username):
            return "keyboard-interactive" if self.key_ok else "publickey"

        def check_auth_publickey(self, username, key):
            if key.get_base64() == allowed:
                self.key_ok = True
                return paramiko.AUTH_PARTIALLY_SUCCESSFUL
            return paramiko.AUTH_FAILED

        def check_auth_interactive(self, username, submethods):
            if not self.key_ok:
                return paramiko.AUTH_FAILED
            query = paramiko.InteractiveQuery("", "one-time code")
            query.add_prompt("Verification code: ", False)
            return query

        def check_auth_interactive_response(self, responses):
            with open(count_file, "a") as out:
                out.write("1\n")
            return paramiko.AUTH_SUCCESSFUL if list(responses) == [code] else paramiko.AUTH_FAILED

        def check_channel_request(self, kind, chanid):
            return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

        def check_channel_exec_request(self, channel, command):
            threading.Thread(target=_run, args=(channel, command), daemon=True).start()
            return True

    def _run(chan, command: bytes) -> None:
        proc = subprocess.Popen(["bash", "-c", command.decode()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

        def pump(src, send):
            while data := os.read(src.fileno(), 32768):
                send(data)

        def feed():
            try:
                while data := chan.recv(32768):
                    proc.stdin.write(data)
                    proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.stdin.close()
            except OSError:
                pass

        threads = [threading.Thread(target=pump, args=(proc.stdout, chan.sendall)),
                   threading.Thread(target=pump, args=(proc.stderr, chan.sendall_stderr)),
                   threading.Thread(target=feed, daemon=True)]
        for t in threads:
            t.start()
        for t in threads[:2]:
            t.join()
        chan.send_exit_status(proc.wait())
        chan.shutdown_write()
        chan.close()

    def _serve(client) -> None:
        transport = paramiko.Transport(client)
        transport.add_server_key(hkey)
        transport.start_server(server=Server())
        channels = []  # paramiko closes a channel nobody references (its __del__)
        while transport.is_active():
            chan = transport.accept(1)
            if chan is not None:
                channels = [c for c in channels if not c.closed] + [chan]

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client,), daemon=True).start()


if __name__ == "__main__" and sys.argv[1:2] == ["otp"]:
    _otp_main(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
