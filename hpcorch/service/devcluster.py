"""The dev cluster (a real Slurm cluster on this machine) as a Python API: up, down, status,
the shell line that points Slurm's clients at it, and installing its packages."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

Log = Callable[[str], None]


def _cluster(profile: str, state_dir: str | os.PathLike | None):
    """The DevCluster of ``profile`` in ``state_dir`` (default: $HPCORCH_DEVCLUSTER_DIR)."""
    from hpcorch.cluster.devcluster import DevCluster

    return DevCluster(profile, Path(state_dir) if state_dir else None)


def up(profile: str = "devcluster", state_dir: str | os.PathLike | None = None, timeout_s: float = 180,
       log: Log = print) -> None:
    """Start munged, MariaDB, slurmdbd, slurmctld and one slurmd per node; wait until idle."""
    _cluster(profile, state_dir).up(timeout_s=timeout_s, log=log)


def down(profile: str = "devcluster", state_dir: str | os.PathLike | None = None, log: Log = print) -> None:
    """Cancel the cluster's jobs and stop exactly the daemons that :func:`up` started."""
    _cluster(profile, state_dir).down(log=log)


def status(profile: str = "devcluster", state_dir: str | os.PathLike | None = None) -> dict:
    """The state directory, each daemon's pid (None: stopped) and whether the cluster is up."""
    cluster = _cluster(profile, state_dir)
    return {"state_dir": str(cluster.local.state_dir), "daemons": cluster.running(), "up": cluster.is_up()}


def status_text(profile: str = "devcluster", state_dir: str | os.PathLike | None = None) -> str:
    """The daemons and, while slurmctld runs, sinfo's table, for people."""
    return _cluster(profile, state_dir).status()


def env_line(profile: str = "devcluster", state_dir: str | os.PathLike | None = None) -> str:
    """The ``export SLURM_CONF=...`` line a shell needs to reach the cluster."""
    return _cluster(profile, state_dir).env_line()


def install(log: Log = print) -> None:
    """Install the Debian packages the dev cluster needs (apt-get, as root)."""
    from hpcorch.cluster.devcluster import install as apt_install

    apt_install(log=log)
