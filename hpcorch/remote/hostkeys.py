"""Host key verification against OpenSSH's known_hosts files.

Unknown keys are refused with their SHA256 fingerprint (never trusted on first use, unlike
paramiko's AutoAddPolicy); ``accept_new`` stores an unknown key as OpenSSH's
``StrictHostKeyChecking=accept-new`` does; a changed key is always refused. Hashed entries and
``[host]:port`` names are honoured (paramiko's ``HostKeys`` reads both).
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hpcorch.errors import RemoteError

if TYPE_CHECKING:
    import paramiko

    from hpcorch.remote.sshconfig import Target

log = logging.getLogger(__name__)

# known_hosts names an RSA key "ssh-rsa"; the signature algorithms that use it have other names.
_ALGORITHMS = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint format: ``SHA256:`` then unpadded base64 of the key's SHA-256."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry(target: Target) -> str:
    """The name known_hosts stores for ``target``: ``host`` on port 22, ``[host]:port`` otherwise."""
    name = target.host_key_alias or target.hostname
    return name if target.port == 22 or target.host_key_alias else f"[{name}]:{target.port}"


def known_keys(target: Target) -> dict[str, tuple[paramiko.PKey, str]]:
    """Key type -> (key, file) for every known_hosts entry matching ``target``, first file first."""
    import paramiko

    name = host_entry(target)
    found: dict[str, tuple[paramiko.PKey, str]] = {}
    for path in target.known_hosts:
        if not os.path.isfile(path):
            continue
        keys = paramiko.HostKeys()
        try:
            keys.load(path)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            # One unreadable file must not hide the others; it is reported, not trusted.
            log.warning("cannot read known_hosts file %s: %s", path, exc)
            continue
        for ktype, key in (keys.lookup(name) or {}).items():
            found.setdefault(ktype, (key, path))
    return found


def preferred_algorithms(target: Target, offered: tuple[str, ...]) -> tuple[str, ...]:
    """Host key algorithms with the known ones first, so a server with several keys shows the
    one we can check (as OpenSSH orders HostKeyAlgorithms)."""
    known = [a for t in known_keys(target) for a in _ALGORITHMS.get(t, [t])]
    first = [a for a in known if a in offered]
    return tuple(first + [a for a in offered if a not in first])


def verify(target: Target, key: paramiko.PKey, accept_new: bool) -> None:
    """Check the server's ``key`` for ``target``; raise RemoteError when it is unknown (unless
    ``accept_new``, which stores it) or changed (always)."""
    name = host_entry(target)
    fp = fingerprint(key)
    known = known_keys(target)
    ktype = key.get_name()
    if ktype in known:
        stored, path = known[ktype]
        if stored.asbytes() == key.asbytes():
            return
        raise RemoteError(
            f"the host key of {name} has CHANGED (now {ktype} {fp}): someone may be intercepting the "
            f"connection (man-in-the-middle), or the host was reinstalled; check with the cluster's admins, "
            f"then remove the old entry with `ssh-keygen -R '{name}' -f {path}`")
    if known:
        types = ", ".join(sorted(known))
        files = sorted({p for _, p in known.values()})
        raise RemoteError(
            f"the host key of {name} has CHANGED: known_hosts has a {types} key, the server offers "
            f"{ktype} {fp}; someone may be intercepting the connection (man-in-the-middle); check with the "
            f"cluster's admins, then remove the old entry with `ssh-keygen -R '{name}' -f {files[0]}`")
    if not accept_new:
        raise RemoteError(
            f"the host key of {name} is unknown ({ktype} {fp}): check this fingerprint with the cluster's "
            "admins, then run `hpcorch remote connect PROFILE --accept-new` to store it")
    store(target, key)


def store(target: Target, key: paramiko.PKey) -> str:
    """Append ``key`` for ``target`` to the first known_hosts file (creating it 0600 in a 0700
    folder); return that file's path."""
    import paramiko

    if not target.known_hosts:
        raise RemoteError(f"{target.display}: no known_hosts file to store the host key in; "
                          "set UserKnownHostsFile in your ssh config")
    path = Path(target.known_hosts[0])
    name = host_entry(target)
    if target.hash_known_hosts:
        name = paramiko.HostKeys.hash_host(name)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    # Append (never rewrite): paramiko's HostKeys.save would drop the lines it cannot parse.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as out:
        if out.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            out.write("\n")
        out.write(f"{name} {key.get_name()} {key.get_base64()}\n")
    log.info("stored the %s host key %s of %s in %s", key.get_name(), fingerprint(key), host_entry(target), path)
    return str(path)
