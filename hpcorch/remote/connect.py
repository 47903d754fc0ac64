"""One authenticated paramiko Transport to a target, through its jump hosts.

Each hop is a Transport of its own (the first over TCP, the others over a ``direct-tcpip``
channel of the hop before), and each hop's host key is verified. Authentication tries, in
OpenSSH's order: ssh-agent keys, identity files (a passphrase asked through the prompter), then
keyboard-interactive (2FA codes) or a password through the prompter. A server that accepts a key
only partially (``AuthenticationMethods publickey,keyboard-interactive``) gets the second factor
next (paramiko returns the remaining methods from ``auth_publickey``).

Every failure becomes a one-line RemoteError naming the host and what to do. Answers given to
prompts are never logged nor put in a message.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpcorch.errors import RemoteError
from hpcorch.remote import hostkeys

if TYPE_CHECKING:
    import paramiko

    from hpcorch.remote.sshconfig import Target

log = logging.getLogger(__name__)

Prompter = Callable[[str, bool], str]
KEEPALIVE_S = 30


@dataclass
class Connection:
    """The target's transport plus the jump transports it rides on (closed together)."""

    target: Target
    transport: paramiko.Transport
    jumps: list[paramiko.Transport] = field(default_factory=list)

    def alive(self) -> bool:
        """True while every transport of the chain is up."""
        return all(t.is_active() for t in [*self.jumps, self.transport])

    def close(self) -> None:
        """Close the target first, then the jumps it rides on."""
        for t in [self.transport, *reversed(self.jumps)]:
            try:
                t.close()
            except Exception:  # closing a dead transport may raise; nothing left to do
                pass


def open_transport(target: Target, prompter: Prompter, accept_new: bool = False,
                   timeout: float = 10) -> Connection:
    """Connect to ``target`` through its jump hosts and authenticate; raise RemoteError."""
    opened: list[paramiko.Transport] = []
    try:
        for hop in [*target.jumps, target]:
            via = opened[-1] if opened else None
            transport = _handshake(hop, via, accept_new, timeout)
            opened.append(transport)
            authenticate(transport, hop, prompter)
            transport.set_keepalive(KEEPALIVE_S)
            log.info("authenticated to %s as %s", hop.display, hop.user)
    except BaseException:
        for t in reversed(opened):
            t.close()
        raise
    return Connection(target, opened[-1], opened[:-1])


def _sock(hop: Target, via: paramiko.Transport | None, timeout: float):
    import paramiko

    where = f"{hop.hostname}:{hop.port}"
    if via is not None:
        try:
            return via.open_channel("direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:
            raise RemoteError(f"the jump host could not reach {where} ({exc.text or exc}): check the host "
                              "name and port as the jump host sees them") from None
        except paramiko.SSHException as exc:
            raise RemoteError(f"the jump host could not open a tunnel to {where} ({exc})") from None
    try:
        sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
        # SSH's small request/reply packets (channel open, exec, exit status) would otherwise
        # wait on Nagle and delayed ACKs, ~40 ms each, as OpenSSH's own client avoids too.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except socket.gaierror:
        raise RemoteError(f"cannot resolve the host name {hop.hostname!r}: check login.host (or HostName in "
                          "your ssh config) and your network") from None
    except ConnectionRefusedError:
        raise RemoteError(f"{where} refused the connection: check login.port (or Port in your ssh config) "
                          "and that sshd runs there") from None
    except TimeoutError:
        raise RemoteError(f"{where} did not answer within {timeout:g} s: check the host, your network or "
                          "VPN, or set login.proxy_jump") from None
    except OSError as exc:
        raise RemoteError(f"cannot reach {where} ({exc.strerror or exc}): check the host, your network or "
                          "VPN") from None


def _handshake(hop: Target, via, accept_new: bool, timeout: float) -> paramiko.Transport:
    import paramiko

    sock = _sock(hop, via, timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
    options = transport.get_security_options()
    options.key_types = hostkeys.preferred_algorithms(hop, options.key_types)
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        raise RemoteError(f"{hop.hostname}:{hop.port} did not complete an SSH handshake ({_short(exc)}): "
                          "check that login.port is the SSH port of the login node") from None
    try:
        hostkeys.verify(hop, transport.get_remote_server_key(), accept_new)
    except BaseException:
        transport.close()
        raise
    return transport


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def authenticate(transport: paramiko.Transport, hop: Target, prompter: Prompter) -> None:
    """Authenticate ``transport`` as ``hop.user``: agent keys, key files, then the prompter."""
    import paramiko

    user = hop.user
    tried: list[str] = []
    try:
        allowed = _allowed(transport, user)
        if allowed is None:  # the server accepted "none"
            return
        if "publickey" in allowed:
            remaining = _publickey(transport, hop, prompter, tried)
            if remaining is not None and not remaining:
                return
            if remaining:  # partial success: the key counted, a second factor follows
                allowed = remaining
        if "keyboard-interactive" in allowed:
            tried.append("keyboard-interactive")
            if not _interactive(transport, user, prompter, hop):
                return
        elif "password" in allowed:
            tried.append("password")
            answer = prompter(f"{user}@{hop.hostname}'s password: ", False)
            if not transport.auth_password(user, answer):
                return
    except paramiko.AuthenticationException:
        pass
    except paramiko.SSHException as exc:
        raise RemoteError(f"{hop.display}: the connection failed during authentication ({_short(exc)})") from None
    if transport.is_authenticated():
        return
    raise RemoteError(f"{hop.display} refused authentication as {user!r} (tried: {', '.join(tried) or 'nothing'}"
                      "): check login.user and login.key_file, add your key to ssh-agent, or ask the admins "
                      "whether your public key is installed")


def _allowed(transport, user: str) -> list[str] | None:
    """The methods the server accepts (OpenSSH asks with method "none" first)."""
    import paramiko

    try:
        transport.auth_none(user)
        return None
    except paramiko.BadAuthenticationType as exc:
        return list(exc.allowed_types)


def _publickey(transport, hop: Target, prompter: Prompter, tried: list[str]) -> list[str] | None:
    """Try each key; return the remaining methods after a (partial) success, None when all failed."""
    import paramiko

    keys: list[tuple[str, paramiko.PKey]] = []
    try:
        keys += [("ssh-agent key", k) for k in paramiko.Agent().get_keys()]
    except (paramiko.SSHException, OSError) as exc:  # e.g. SSH_AUTH_SOCK names a dead socket
        log.warning("ssh-agent not usable: %s", exc)
    n_agent = len(keys)
    tried_files = 0
    for source, key in _with_files(keys, hop, prompter):
        if source != "ssh-agent key":
            tried_files += 1
        try:
            remaining = transport.auth_publickey(hop.user, key)
        except paramiko.AuthenticationException:
            log.info("%s: %s refused", hop.display, source)
            continue
        _note(tried, n_agent, tried_files)
        return list(remaining or [])
    _note(tried, n_agent, tried_files)
    return None


def _note(tried: list[str], n_agent: int, n_files: int) -> None:
    if n_agent:
        tried.append(f"{n_agent} ssh-agent key{'s' * (n_agent > 1)}")
    if n_files:
        tried.append(f"{n_files} key file{'s' * (n_files > 1)}")


def _with_files(keys, hop: Target, prompter: Prompter):
    """Agent keys first, then each identity file, loaded lazily (a passphrase only when needed)."""
    yield from keys
    for path in hop.identity_files:
        key = load_key(path, prompter)
        if key is not None:
            yield f"key file {path}", key


def load_key(path: str, prompter: Prompter):
    """A private key from ``path``, asking its passphrase (three tries); None when unusable."""
    import paramiko

    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.PasswordRequiredException, TypeError):
        pass  # paramiko 5 lets cryptography's TypeError through for an encrypted OpenSSH key
    except (paramiko.SSHException, OSError, ValueError) as exc:
        log.warning("skipping key file %s: %s", path, _short(exc))
        return None
    for _ in range(3):
        passphrase = prompter(f"Enter passphrase for key '{path}': ", False)
        if not passphrase:
            return None
        try:
            return paramiko.PKey.from_path(path, password=passphrase.encode())
        except (paramiko.SSHException, ValueError):  # a wrong passphrase: ValueError
            log.info("wrong passphrase for key file %s", path)
    return None


def _interactive(transport, user: str, prompter: Prompter, hop: Target) -> list[str]:
    failed: list[BaseException] = []

    def handler(title: str, instructions: str, prompts) -> list[str]:
        answers = []
        try:
            for i, (text, echo) in enumerate(prompts):
                # The server's instructions (e.g. a Duo menu) must be seen before the first answer.
                head = "\n".join(s for s in (title, instructions) if s) if i == 0 else ""
                answers.append(prompter(f"{head}\n{text}" if head else text or f"{hop.display}: ", bool(echo)))
        except BaseException as exc:
            # paramiko calls this in its transport thread, where an exception would be lost;
            # answer blank (refused) and raise it after the attempt.
            failed.append(exc)
            return [""] * len(prompts)
        return answers

    try:
        remaining = transport.auth_interactive(user, handler)
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    if failed:
        raise failed[0] from None
    return remaining
