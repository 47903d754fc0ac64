"""The real Slurm dev cluster for tests marked ``slurm``: started once per session (or reused
if one is already running), stopped at the end only if this session started it."""
from __future__ import annotations

import os
import shutil

import pytest


def _needs_install() -> bool:
    return any(shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin") is None
               for b in ("slurmctld", "slurmdbd", "munged", "mariadbd"))


@pytest.fixture(scope="session")
def devcluster():
    from hpcorch.cluster.devcluster import DevCluster, install

    if os.geteuid() != 0:
        pytest.skip("the dev cluster needs root")
    if _needs_install():
        install()
    cluster = DevCluster("devcluster")
    started = not cluster.is_up()
    if started:
        cluster.up(timeout_s=300)
    yield cluster
    if started:
        cluster.down()


@pytest.fixture
def slurm(devcluster):
    """Slurm's commands aimed at the dev cluster; nodes are back to idle after each test."""
    from slurmhelp import TestSlurm

    s = TestSlurm(env={"SLURM_CONF": str(devcluster.etc / "slurm.conf")})
    yield s
    for node in devcluster.profile.all_hosts():
        if s.node_state(node).rstrip("*~#") not in ("idle", "mixed", "allocated"):
            s.set_node(node, "RESUME")
