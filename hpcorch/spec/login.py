"""A profile's ``login:`` section: how a laptop reaches the cluster's login node over SSH."""
from __future__ import annotations

import re
from dataclasses import dataclass

from hpcorch.spec import units
from hpcorch.spec.schema import Invalid, check_name


@dataclass
class Login:
    """Where a remote client reaches the cluster's login node over SSH (``hpcorch.remote``).
    ``host`` may be an alias of the user's ``~/.ssh/config``; a key given here wins over the
    config's, as on ssh's command line. Every value reaches an ssh option or a remote shell
    word (quoted), so each is checked against its own alphabet."""

    host: str
    user: str | None = None
    port: int | None = None             # None: the ssh config's Port, else 22
    key_file: str | None = None
    proxy_jump: str | None = None       # OpenSSH's -J: [user@]host[:port], comma-separated hops
    workdir: str = "~/hpcorch"          # synced job files and code go here on the login node
    python: str = "python3"             # the login node's interpreter (or venv) with hpcorch
    persist: str = "1:00:00"            # the local agent ends after this long without a command

    def __post_init__(self):
        check_name("host", self.host, "a host name")
        check_name("user", self.user, "a user name")
        if self.port is not None and not 0 < self.port < 65536:
            raise Invalid("port", f"expected a TCP port 1-65535, got {self.port}")
        for hop in (self.proxy_jump.split(",") if self.proxy_jump is not None else []):
            if not _HOP_RE.fullmatch(hop):
                raise Invalid("proxy_jump", "expected [user@]host[:port] hops separated by commas, "
                                            f"got {self.proxy_jump!r}")
        for key in ("key_file", "workdir", "python"):
            value = getattr(self, key)
            if value is not None and not _REMOTE_PATH_RE.fullmatch(value):
                raise Invalid(key, "expected a path (letters, digits, _./+@,=-, a leading ~/, not starting with -), "
                                   f"got {value!r}")
        try:
            units.parse_time(self.persist)
        except ValueError as exc:
            raise Invalid("persist", str(exc)) from None
        if self.persist_s is None:
            raise Invalid("persist", "expected a finite idle time such as 1:00:00, got unlimited")

    @property
    def persist_s(self) -> int | None:
        return units.parse_time(self.persist)


_HOP_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.+-]{0,63}@)?[A-Za-z0-9][A-Za-z0-9_.-]{0,252}(:\d{1,5})?")
_REMOTE_PATH_RE = re.compile(r"(~/)?[A-Za-z0-9_./+@,=][A-Za-z0-9_./+@,=-]{0,1023}")  # no leading "-": never an option
