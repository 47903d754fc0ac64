"""The SSH target of a profile's ``login:`` as OpenSSH itself would resolve it.

``ssh -G`` prints OpenSSH's fully resolved configuration (Include, Match, ProxyJump, per-host
IdentityFile), which paramiko's own parser does not understand (paramiko#1609), so it is the
ground truth whenever the ``ssh`` client is installed; paramiko's ``SSHConfig`` is the fallback.
The profile's fields win over the config file, as options on ssh's command line do.

``$HPCORCH_SSH_CONFIG`` names the config file to read instead of ``~/.ssh/config`` (tests use it
so the user's own configuration is never read).
"""
from __future__ import annotations

import getpass
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from hpcorch.errors import RemoteError
from hpcorch.spec.profile import Login

log = logging.getLogger(__name__)

# OpenSSH chains at most this many jump hosts before calling the configuration a loop.
MAX_HOPS = 8


@dataclass
class Target:
    """One SSH endpoint after config resolution. ``jumps`` are the hosts to ride through, in the
    order they are connected (the first one is reached directly)."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[str] = field(default_factory=list)
    known_hosts: list[str] = field(default_factory=list)
    jumps: list[Target] = field(default_factory=list)
    key: str = ""
    # Not in the design's field list, both optional: OpenSSH's HashKnownHosts (how accept-new
    # writes a new entry) and HostKeyAlias (the name known_hosts is searched under).
    hash_known_hosts: bool = False
    host_key_alias: str | None = None

    def __post_init__(self):
        if not self.key:
            own = f"{self.user}@{self.hostname}:{self.port}"
            self.key = ">".join([j.key for j in self.jumps] + [own])

    @property
    def display(self) -> str:
        """``user@hostname:port`` for messages."""
        return f"{self.user}@{self.hostname}:{self.port}"

    def to_dict(self) -> dict:
        """A JSON-able form (the client hands the resolved target to the agent it starts)."""
        return {"alias": self.alias, "hostname": self.hostname, "port": self.port, "user": self.user,
                "identity_files": self.identity_files, "known_hosts": self.known_hosts,
                "jumps": [j.to_dict() for j in self.jumps], "key": self.key,
                "hash_known_hosts": self.hash_known_hosts, "host_key_alias": self.host_key_alias}

    @classmethod
    def from_dict(cls, data: dict) -> Target:
        return cls(**{**data, "jumps": [cls.from_dict(j) for j in data.get("jumps", [])]})


def config_file() -> str | None:
    """The ssh config file to read: ``$HPCORCH_SSH_CONFIG`` or None (OpenSSH's default)."""
    return os.environ.get("HPCORCH_SSH_CONFIG") or None


def resolve(login: Login) -> Target:
    """Resolve ``login`` (host alias, user, port, key file, proxy jump) to a :class:`Target`,
    jump hosts included; raise RemoteError naming the host when the config cannot be read."""
    return _resolve(login.host, login.user, login.port, login.key_file, login.proxy_jump, depth=0)


def _resolve(host: str, user: str | None, port: int | None, key_file: str | None,
             proxy_jump: str | None, depth: int) -> Target:
    if depth > MAX_HOPS:
        raise RemoteError(f"{host}: more than {MAX_HOPS} ProxyJump hops; is there a loop in your ssh config?")
    opts = _ssh_g(host, user, port, key_file, proxy_jump) if shutil.which("ssh") else \
        _paramiko_lookup(host, user, port, key_file, proxy_jump)
    proxy_command = _one(opts, "proxycommand")
    if proxy_command and proxy_command.lower() != "none":
        raise RemoteError(f"{host}: the ssh config sets ProxyCommand, which hpcorch does not run; "
                          "use ProxyJump (or login.proxy_jump) instead")
    jumps: list[Target] = []
    jump_spec = _one(opts, "proxyjump")
    if jump_spec and jump_spec.lower() != "none":
        # As OpenSSH: the first hop is reached with its own config (its own ProxyJump too); each
        # later hop rides on the ones before it.
        for i, hop in enumerate(jump_spec.split(",")):
            hop_user, hop_host, hop_port = parse_hop(hop)
            resolved = _resolve(hop_host, hop_user, hop_port, None, None if i == 0 else "none", depth + 1)
            jumps.extend(resolved.jumps)
            resolved.jumps = []
            resolved.key = f"{resolved.user}@{resolved.hostname}:{resolved.port}"
            jumps.append(resolved)
    return Target(
        alias=host, hostname=_one(opts, "hostname") or host, port=int(_one(opts, "port") or 22),
        user=_one(opts, "user") or user or getpass.getuser(),
        identity_files=_existing(opts.get("identityfile", [])),
        known_hosts=[os.path.expanduser(p) for p in opts.get("userknownhostsfile", [])]
        + [os.path.expanduser(p) for p in opts.get("globalknownhostsfile", [])],
        jumps=jumps, hash_known_hosts=(_one(opts, "hashknownhosts") or "no").lower() == "yes",
        host_key_alias=_one(opts, "hostkeyalias"))


def parse_hop(hop: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (OpenSSH's -J syntax) -> (user, host, port)."""
    user, _, rest = hop.rpartition("@")
    host, _, port = rest.partition(":")
    return user or None, host, int(port) if port else None


def _one(opts: dict[str, list[str]], name: str) -> str | None:
    values = opts.get(name)
    return values[0] if values else None


def _existing(paths: list[str]) -> list[str]:
    # OpenSSH lists its default identity files whether or not they exist; only real ones count.
    out = []
    for p in paths:
        path = os.path.expanduser(p)
        if os.path.isfile(path) and path not in out:
            out.append(path)
    return out


def _ssh_g(host: str, user: str | None, port: int | None, key_file: str | None,
           proxy_jump: str | None) -> dict[str, list[str]]:
    argv = ["ssh", "-G"]
    if config_file():
        argv += ["-F", config_file()]
    if port is not None:
        argv += ["-p", str(port)]
    if user is not None:
        argv += ["-l", user]
    if key_file is not None:
        argv += ["-i", os.path.expanduser(key_file)]
    if proxy_jump is not None:
        # "none" clears the config's ProxyJump (a later hop rides on the earlier ones instead).
        argv += ["-o", "ProxyJump=none"] if proxy_jump == "none" else ["-J", proxy_jump]
    argv += ["--", host]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RemoteError(f"{host}: could not run `ssh -G` to read the ssh config ({exc})") from None
    if out.returncode != 0:
        detail = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise RemoteError(f"{host}: `ssh -G` refused the ssh config ({detail}); fix {config_file() or '~/.ssh/config'}")
    return _parse_lines(out.stdout.splitlines())


def _parse_lines(lines: list[str]) -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.strip().partition(" ")
        if not name:
            continue
        name = name.lower()
        # Multi-valued options: one line each (identityfile) or space-separated values.
        if name in ("userknownhostsfile", "globalknownhostsfile"):
            opts.setdefault(name, []).extend(value.split())
        else:
            opts.setdefault(name, []).append(value)
    return opts


def _paramiko_lookup(host: str, user: str | None, port: int | None, key_file: str | None,
                     proxy_jump: str | None) -> dict[str, list[str]]:
    """The fallback without OpenSSH: paramiko's parser (no Include, no Match exec)."""
    import paramiko  # lazy: cold CLI paths never import paramiko

    path = Path(config_file() or os.path.expanduser("~/.ssh/config"))
    cfg = paramiko.SSHConfig()
    if path.is_file():
        try:
            cfg = paramiko.SSHConfig.from_path(str(path))
        except Exception as exc:  # paramiko raises several types for a malformed file
            raise RemoteError(f"{host}: cannot read {path} ({exc})") from None
    found = cfg.lookup(host)
    opts: dict[str, list[str]] = {k: (v if isinstance(v, list) else [str(v)]) for k, v in found.items()}
    for name, value in (("port", port), ("user", user)):
        if value is not None:
            opts[name] = [str(value)]
    if key_file is not None:
        opts["identityfile"] = [os.path.expanduser(key_file)] + opts.get("identityfile", [])
    if "identityfile" not in opts:
        opts["identityfile"] = [f"~/.ssh/id_{t}" for t in ("rsa", "ecdsa", "ed25519")]
    if proxy_jump is not None:
        opts["proxyjump"] = [proxy_jump]
    opts.setdefault("userknownhostsfile", ["~/.ssh/known_hosts"])
    opts["userknownhostsfile"] = " ".join(opts["userknownhostsfile"]).split()
    return opts
