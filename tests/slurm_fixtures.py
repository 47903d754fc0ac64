"""The real Slurm dev cluster for tests marked ``slurm``: started once per session (or reused
if one is already running), stopped at the end only if this session started it."""
from __future__ import annotations

import os
import shutil

import pytest


def _needs_install() -> bool:
    return any(shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin") is None
               for b in ("slurmctld", "slurmdbd", "munged", "mariadbd"))


def _which_scontrol() -> str | None:
    return shutil.which("scontrol", path=os.environ.get("PATH", "") + ":/usr/bin")


@pytest.fixture(scope="session")
def scontrol() -> str:
    """The path of Slurm's ``scontrol``, installing Slurm's client package first when it is
    missing and we are root (a fresh CI machine installs Slurm during the run, after collection,
    so a collection-time skipif would skip these tests there). Costs one ``which`` when present."""
    found = _which_scontrol()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("Slurm's scontrol is not installed, and installing it needs root")
    from hpcorch.cluster.devcluster import CLIENT_PACKAGES, install

    install(packages=CLIENT_PACKAGES)
    found = _which_scontrol()
    if not found:
        pytest.fail(f"installed {CLIENT_PACKAGES} but scontrol is still not on PATH")
    return found


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
    from hpcorch.util.poll import poll_until

    for node in devcluster.profile.all_hosts():
        # A node still COMPLETING a killed job refuses RESUME ("Invalid node state"): let it settle.
        def settled(node=node):
            state = s.node_state(node).rstrip("*~#$@^-!%")
            return None if "comp" in state else state

        state = poll_until(settled, 60, interval_s=0.5, what=f"{node} done completing")
        if state.split("+")[0] in ("down", "drained", "draining", "drain", "fail", "failing"):
            s.set_node(node, "RESUME")
            # A resumed node is "idle*" (not responding) until slurmd answers the controller's
            # next ping; until then the next test's `sbatch --test-only --nodes=4` is refused
            # ("Requested node configuration is not available").
            poll_until(lambda node=node: not s.node_state(node).endswith("*") or None, 60, interval_s=0.25,
                       what=f"{node} responding after RESUME")
