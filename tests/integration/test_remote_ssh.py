"""Remote operation over SSH against real servers: OpenSSH's sshd on loopback (also as a jump
host) and a paramiko server that asks for a one-time code. Every error is produced for real.

The client side is isolated (``laptop``): its own HPCORCH_HOME, ssh config and known_hosts, and no
ssh-agent, so the user's ~/.ssh is never read nor written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd import OtpServer, fingerprint, free_port, keygen

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The CLI failed as hpcorch's errors do: exit 2, one line, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def in_process(laptop, monkeypatch):
    """This process sees the laptop's environment (for calling the client API directly)."""
    for key in ("HPCORCH_HOME", "HPCORCH_SSH_CONFIG", "PYTHONPATH"):
        monkeypatch.setenv(key, laptop.env[key])
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return laptop


def test_connect_run_and_version(sshd, laptop, in_process):
    from hpcorch.remote.client import Session, agents
    from hpcorch.spec.profile import load_profile

    laptop.add_host(sshd, "login")
    laptop.profile("cl", sshd.login_block("login"))
    out = laptop.cli("remote", "connect", "cl")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"connected to {sshd.user}@127.0.0.1:{sshd.port} (hpcorch 0.1.0, "
                                  f"{sys.executable}); idle timeout 10m")

    out = laptop.cli("remote", "run", "cl", "--", "bash", "-c", "echo out $1; echo err >&2; exit 3", "-", "a b")
    assert (out.returncode, out.stdout, out.stderr) == (3, "out a b\n", "err\n")

    session = Session.open(load_profile("cl").login, start=False)
    data = os.urandom(200_000)
    done = session.run(["cat"], stdin=data)
    assert (done.code, done.stdout, done.bytes_in, done.bytes_out) == (0, data, len(data), len(data))
    seen = []
    done = session.run("pwd; echo ~", cwd="/tmp", on_stdout=seen.append)
    assert done.stdout == b"" and b"".join(seen).decode().split() == ["/tmp", str(Path.home())]
    assert session.check_version() == "0.1.0"

    (info,) = agents()
    assert info["commands"] == 4 and info["bytes_in"] > len(data) and info["bytes_out"] == len(data) and info["persist_s"] == 600
    assert info == {**info, "host": session.host, "jumps": []}
    sock = Path(info["socket"])
    assert oct(sock.stat().st_mode & 0o777) == "0o600" and oct(sock.parent.stat().st_mode & 0o777) == "0o700"
    status = json.loads(laptop.cli("remote", "status", "cl", "--json").stdout)
    assert [s["pid"] for s in status] == [info["pid"]]
    out = laptop.cli("remote", "disconnect", "cl")
    assert out.stdout.strip() == "disconnected"
    time.sleep(0.5)
    assert agents() == [] and not Path(info["socket"]).exists()
    assert laptop.cli("remote", "disconnect", "cl").stdout.strip() == "no connection was open"


def test_remote_command_quotes_all_but_a_leading_tilde():
    from hpcorch.remote.client import remote_command

    assert remote_command(["python3", "-m", "hpcorch", "a b", "~/x y", "$HOME", "~"]) == \
        "python3 -m hpcorch 'a b' ~/'x y' '$HOME' ~"
    assert remote_command(["ls"], cwd="~/hpcorch/code") == "cd ~/hpcorch/code && ls"


def test_unknown_host_key_refused_then_accept_new_stores_it(sshd, laptop):
    laptop.add_host(sshd, "login", trust=False)
    laptop.profile("cl", sshd.login_block("login"))
    line = one_line_error(laptop.cli("remote", "connect", "cl"))
    assert f"host key of [127.0.0.1]:{sshd.port} is unknown" in line
    assert sshd.fingerprint in line and "hpcorch remote connect PROFILE --accept-new" in line
    assert not laptop.known_hosts.exists()

    out = laptop.cli("remote", "connect", "cl", "--accept-new")
    assert out.returncode == 0, out.stderr
    assert laptop.known_hosts.read_text() == sshd.known_hosts_line()
    assert oct(laptop.known_hosts.stat().st_mode & 0o777) == "0o600"
    laptop.cli("remote", "disconnect")
    out = laptop.cli("remote", "connect", "cl")
    assert out.returncode == 0, out.stderr


def test_changed_host_key_refused_even_with_accept_new(sshd, laptop, tmp_path):
    laptop.add_host(sshd, "login", trust=False)
    laptop.profile("cl", sshd.login_block("login"))
    other = keygen(tmp_path / "other")
    kind, b64 = (tmp_path / "other.pub").read_text().split()[:2]
    laptop.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {b64}\n")
    line = one_line_error(laptop.cli("remote", "connect", "cl", "--accept-new"))
    assert f"host key of [127.0.0.1]:{sshd.port} has CHANGED" in line and sshd.fingerprint in line
    assert "man-in-the-middle" in line and f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in line

    # Only a key of another type is known: still a change (as OpenSSH), never a new key.
    keygen(tmp_path / "rsa", kind="rsa")
    kind, b64 = (tmp_path / "rsa.pub").read_text().split()[:2]
    laptop.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {b64}\n")
    line = one_line_error(laptop.cli("remote", "connect", "cl", "--accept-new"))
    assert "has CHANGED" in line and "ssh-rsa" in line
    assert laptop.known_hosts.read_text().count("\n") == 1
    del other


def test_hashed_known_hosts_entry_is_honoured(sshd, laptop):
    laptop.add_host(sshd, "login")
    subprocess.run(["ssh-keygen", "-H", "-f", str(laptop.known_hosts)], check=True, capture_output=True, timeout=30)
    assert laptop.known_hosts.read_text().startswith("|1|")
    laptop.profile("cl", sshd.login_block("login"))
    out = laptop.cli("remote", "connect", "cl")
    assert out.returncode == 0, out.stderr


def test_jump_host_from_an_included_ssh_config(sshd, sshd_factory, laptop, in_process):
    from hpcorch.remote.sshconfig import resolve
    from hpcorch.spec.profile import load_profile

    jump = sshd_factory("jump")
    conf_d = laptop.root / "conf.d"
    conf_d.mkdir()
    (conf_d / "cluster.conf").write_text(jump.ssh_config("gate", laptop.known_hosts)
                                         + sshd.ssh_config("login", laptop.known_hosts, extra="  ProxyJump gate\n"))
    laptop.ssh_config.write_text(f"Include {conf_d}/*.conf\n")
    laptop.known_hosts.write_text(jump.known_hosts_line() + sshd.known_hosts_line())
    laptop.profile("cl", sshd.login_block("login"))

    target = resolve(load_profile("cl").login)
    assert [(j.hostname, j.port) for j in target.jumps] == [("127.0.0.1", jump.port)]
    assert target.key == f"{jump.user}@127.0.0.1:{jump.port}>{sshd.user}@127.0.0.1:{sshd.port}"

    before = jump.accepted()
    out = laptop.cli("remote", "connect", "cl")
    assert out.returncode == 0, out.stderr
    out = laptop.cli("remote", "run", "cl", "--", "echo", "through")
    assert out.stdout == "through\n"
    assert jump.accepted() == before + 1
    (info,) = laptop.agents()
    assert info["jumps"] == [f"{jump.user}@127.0.0.1:{jump.port}"]


def test_the_profile_wins_over_the_ssh_config(sshd, laptop, in_process, tmp_path):
    from hpcorch.remote.sshconfig import resolve
    from hpcorch.spec.profile import Login

    laptop.add_host(sshd, "login")
    key = keygen(tmp_path / "mine")
    target = resolve(Login(host="login", user="someone", port=2222, key_file=str(key)))
    assert (target.hostname, target.port, target.user) == ("127.0.0.1", 2222, "someone")
    assert target.identity_files[0] == str(key) and target.known_hosts[0] == str(laptop.known_hosts)


def test_concurrent_first_calls_start_one_agent(sshd, laptop):
    laptop.add_host(sshd, "login")
    laptop.profile("cl", sshd.login_block("login"))
    before = sshd.accepted()
    procs = [subprocess.Popen([sys.executable, "-m", "hpcorch", "remote", "run", "cl", "--", "echo", str(i)],
                              env=laptop.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True) for i in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o[0] for o in outs] == [b"0\n", b"1\n", b"2\n"], outs
    assert sshd.accepted() == before + 1 and len(laptop.agents()) == 1


def test_agent_ends_when_idle_and_the_next_call_starts_another(sshd, laptop):
    laptop.add_host(sshd, "login")
    laptop.profile("cl", sshd.login_block("login", persist="0:00:02"))
    assert laptop.cli("remote", "connect", "cl").returncode == 0
    (info,) = laptop.agents()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and Path(info["socket"]).exists():
        time.sleep(0.2)
    assert not Path(info["socket"]).exists()
    out = laptop.cli("remote", "run", "cl", "--", "echo", "again")
    assert out.stdout == "again\n", out.stderr
    assert [a["pid"] for a in laptop.agents()] != [info["pid"]]


def test_agent_ends_when_the_connection_dies(sshd_factory, laptop, in_process):
    from hpcorch.errors import RemoteError
    from hpcorch.remote.client import Session
    from hpcorch.spec.profile import load_profile

    server = sshd_factory("dying")
    laptop.add_host(server, "login")
    laptop.profile("cl", server.login_block("login"))
    assert laptop.cli("remote", "connect", "cl").returncode == 0
    (info,) = laptop.agents()
    # sshd serves each connection in a child process: ending those cuts the agent's transport.
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    assert children
    for pid in children:
        os.kill(int(pid), 9)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and Path(info["socket"]).exists():
        time.sleep(0.2)
    assert not Path(info["socket"]).exists()
    assert "died; exiting" in laptop.logs()
    with pytest.raises(RemoteError, match="not connected to .*: run `hpcorch remote connect PROFILE`"):
        Session.open(load_profile("cl").login, start=False)
    out = laptop.cli("remote", "run", "cl", "--", "echo", "back")
    assert out.stdout == "back\n", out.stderr


def test_paramiko_parses_the_config_when_ssh_is_missing(laptop, in_process, monkeypatch, tmp_path):
    from hpcorch.remote.sshconfig import resolve
    from hpcorch.spec.profile import Login

    key = keygen(tmp_path / "k")
    laptop.ssh_config.write_text(f"Host gate\n  HostName 10.0.0.1\n  User g\n"
                                 f"Host login\n  HostName 10.0.0.2\n  Port 2200\n  User me\n  IdentityFile {key}\n"
                                 f"  UserKnownHostsFile {laptop.known_hosts}\n  ProxyJump gate\n")
    monkeypatch.setenv("PATH", str(tmp_path))  # no `ssh` on the path
    target = resolve(Login(host="login"))
    assert (target.hostname, target.port, target.user, target.identity_files) == ("10.0.0.2", 2200, "me", [str(key)])
    assert target.known_hosts[0] == str(laptop.known_hosts)
    assert [(j.hostname, j.port, j.user) for j in target.jumps] == [("10.0.0.1", 22, "g")]


def test_keyboard_interactive_2fa_prompts_once_in_20_calls(laptop, tmp_path):
    passphrase, code = "correct horse 81", "424242"
    key = keygen(tmp_path / "otp_key", passphrase=passphrase)
    server = OtpServer(tmp_path / "otp", key.with_suffix(".pub"), code, env={"PYTHONPATH": str(REPO)}).start()
    try:
        with open(laptop.ssh_config, "a") as out:
            out.write(f"Host otp\n  HostName 127.0.0.1\n  Port {server.port}\n  IdentityFile {key}\n"
                      f"  UserKnownHostsFile {laptop.known_hosts}\n  GlobalKnownHostsFile /dev/null\n")
        laptop.known_hosts.write_text(server.known_hosts_line())
        laptop.profile("mfa", f"login:\n  host: otp\n  python: {sys.executable}\n")

        out = laptop.cli("remote", "connect", "mfa")  # nobody to answer (the prompt is on stderr too)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        line = out.stderr.strip().splitlines()[-1]
        assert "authentication needs an answer to" in line and "passphrase" in line and "run in a terminal" in line

        first = laptop.cli("remote", "connect", "mfa", input=f"{passphrase}\n{code}\n")
        assert first.returncode == 0, first.stderr
        assert "Verification code:" in first.stderr and f"Enter passphrase for key '{key}'" in first.stderr
        for i in range(19):
            out = laptop.cli("remote", "run", "mfa", "--", "echo", f"call-{i}")
            assert (out.returncode, out.stdout) == (0, f"call-{i}\n"), out.stderr
        assert server.interactive_auths() == 1
        (info,) = laptop.agents()
        assert info["commands"] == 20  # the version check, then 19 commands
        text = laptop.logs()
        assert "authenticated to" in text
        every_file = "".join(p.read_text(errors="replace") for p in laptop.root.rglob("*") if p.is_file()
                             and p.stat().st_size < 1 << 20 and "otp_key" not in p.name)
        assert code not in every_file and passphrase not in every_file
    finally:
        laptop.cleanup()
        server.stop()


def test_wrong_2fa_code_is_refused(laptop, tmp_path):
    key = keygen(tmp_path / "k")
    server = OtpServer(tmp_path / "otp", key.with_suffix(".pub"), "111111").start()
    try:
        laptop.ssh_config.write_text(f"Host otp\n  HostName 127.0.0.1\n  Port {server.port}\n  IdentityFile {key}\n"
                                     f"  UserKnownHostsFile {laptop.known_hosts}\n")
        laptop.known_hosts.write_text(server.known_hosts_line())
        laptop.profile("mfa", "login:\n  host: otp\n  user: alice\n")
        out = laptop.cli("remote", "connect", "mfa", input="999999\n")
        assert out.returncode == 2 and "Verification code: " in out.stderr
        line = out.stderr.strip().splitlines()[-1]
        assert f"alice@127.0.0.1:{server.port} refused authentication as 'alice'" in line
        assert "1 key file, keyboard-interactive" in line and "999999" not in laptop.logs()
    finally:
        server.stop()


def test_unreachable_and_wrong_key_are_one_line_errors(sshd, laptop, tmp_path):
    closed = free_port()
    laptop.ssh_config.write_text(f"Host gone\n  HostName 127.0.0.1\n  Port {closed}\n")
    laptop.profile("gone", "login:\n  host: gone\n")
    line = one_line_error(laptop.cli("remote", "connect", "gone"))
    assert line == (f"error: 127.0.0.1:{closed} refused the connection: check login.port (or Port in your ssh "
                    "config) and that sshd runs there") or f"127.0.0.1:{closed} refused the connection" in line

    laptop.add_host(sshd, "login", key=keygen(tmp_path / "stranger"))
    laptop.profile("cl", sshd.login_block("login"))
    line = one_line_error(laptop.cli("remote", "connect", "cl"))
    assert f"{sshd.user}@127.0.0.1:{sshd.port} refused authentication as '{sshd.user}' (tried: 1 key file)" in line

    laptop.profile("nologin", "")
    line = one_line_error(laptop.cli("remote", "connect", "nologin"))
    assert "nologin.yaml: login:" in line


def test_remote_python_or_hpcorch_missing_or_another_version(sshd, laptop, tmp_path):
    laptop.add_host(sshd, "login")
    laptop.profile("nopy", sshd.login_block("login", python="/nonexistent/bin/python3"))
    line = one_line_error(laptop.cli("remote", "connect", "nopy"))
    assert f"python not found on {sshd.user}@127.0.0.1:{sshd.port}" in line and "set login.python" in line

    bare = tmp_path / "bare-python"  # an interpreter that cannot see hpcorch
    bare.write_text(f"#!/bin/sh\nexec env -u PYTHONPATH {shutil.which('python3', path='/usr/bin')} \"$@\"\n")
    bare.chmod(0o755)
    laptop.profile("nohp", sshd.login_block("login", python=str(bare)))
    line = one_line_error(laptop.cli("remote", "connect", "nohp"))
    assert f"hpcorch is not installed for {bare} on {sshd.user}@127.0.0.1:{sshd.port}" in line
    assert "pip install hpcorch==0.1.0" in line

    other = tmp_path / "other" / "hpcorch"
    shutil.copytree(REPO / "hpcorch", other, ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.7.2"'))
    wrapper = tmp_path / "other-python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={other.parent} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    laptop.profile("old", sshd.login_block("login", python=str(wrapper)))
    line = one_line_error(laptop.cli("remote", "connect", "old"))
    assert f"{sshd.user}@127.0.0.1:{sshd.port} has hpcorch 0.7.2, this machine 0.1.0: install the same version" in line
    assert len(laptop.agents()) == 1  # all three used the one agent of this target


def test_cold_paths_do_not_import_paramiko(laptop):
    code = ("import sys; from hpcorch.cli.main import main; import hpcorch.remote.client, hpcorch.cli.remote_commands; "
            "print('paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=laptop.env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_fingerprint_matches_ssh_keygen(tmp_path):
    import paramiko

    from hpcorch.remote.hostkeys import fingerprint as ours

    key = keygen(tmp_path / "k")
    assert ours(paramiko.PKey.from_path(str(key))) == fingerprint(key.with_suffix(".pub"))
