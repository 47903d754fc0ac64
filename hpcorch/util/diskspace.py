"""Which file system a path lives on and how full it is, to say in one line why a write failed.

No torch: plain ``os.statvfs`` and psutil's mount table.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from hpcorch.errors import HpcorchError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (a failed save may have removed its folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def filesystem_of(path: str | os.PathLike) -> tuple[str, str]:
    """(mount point, file system type) of ``path``; the type is "unknown" if the mount table
    does not say."""
    mount = _existing(Path(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        import psutil

        # The last entry wins: a later mount over the same point hides the earlier one.
        types = {p.mountpoint: p.fstype for p in psutil.disk_partitions(all=True)}
    except Exception:  # the mount table is a nicety in an error message, never a second error
        types = {}
    return str(mount), types.get(str(mount), "unknown")


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system."""
    st = os.statvfs(_existing(Path(path)))
    return st.f_bavail * st.f_frsize


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units (kB, MB, GB, TB), as ``df -H`` counts."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def describe_write_failure(what: str, path: str | os.PathLike, exc: OSError, needed: int | None = None) -> str:
    """One line: ``{what} failed: no space left on device on /mnt/x (tmpfs): needs ~12.3 MB,
    1.1 MB free``. Space is only reported for a full disk or quota; ``needed`` is what the
    writer tried to write. Measure after the failed write's own temporary files are gone, so
    "free" is what the file system really had for it."""
    mount, fstype = filesystem_of(path)
    reason = (exc.strerror or str(exc)).lower() if exc.errno else str(exc)
    line = f"{what} failed: {reason} on {mount} ({fstype})"
    if exc.errno in _NO_SPACE:
        try:
            free = f"{human_bytes(free_bytes(path))} free"
        except OSError:
            free = "free space unknown"
        line += f": needs ~{human_bytes(needed)}, {free}" if needed else f": {free}"
    return line


class DiskFull(HpcorchError, OSError):
    """A write that found no space (or no quota) left: still an ``OSError`` with its errno for
    code that cleans up after any failed write, and one line for the user."""

    def __init__(self, path: str | os.PathLike, exc: OSError, needed: int | None = None):
        OSError.__init__(self, exc.errno, exc.strerror, str(path))
        self.description = describe_write_failure(f"writing {path}", path, exc, needed)

    def __str__(self) -> str:
        return self.description

    @staticmethod
    def applies(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno in _NO_SPACE
