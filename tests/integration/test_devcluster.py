"""The dev cluster's own lifecycle: generated configs, a second cluster beside the first, down."""
import os
import shutil
import subprocess

import pytest
from conftest import run_cli

from hpcorch.cluster.slurmconf import LocalCluster, slurm_conf, write_configs
from hpcorch.spec.profile import load_profile


def test_slurm_conf_from_devcluster_profile(tmp_path):
    prof = load_profile("devcluster")
    text = slurm_conf(prof, LocalCluster(tmp_path, port_base=20000))
    # Two node groups: one NodeName line each, typed GRES, features, consecutive slurmd ports.
    assert "NodeName=node[1-2] CPUs=4 RealMemory=4000 Gres=gpu:emua:4 Feature=emu,grpa" in text
    assert "NodeName=node[3-4] CPUs=4 RealMemory=4000 Gres=gpu:emub:4 Feature=emu,grpb" in text
    assert "Port=20100-20101" in text and "Port=20102-20103" in text and "SlurmctldPort=20000" in text
    assert "PartitionName=batch Nodes=node[1-4] Default=YES" in text
    assert "PriorityTier=10 PreemptMode=OFF" in text and "GraceTime=30 PreemptMode=REQUEUE" in text
    assert "ReturnToService=1" in text and "TopologyPlugin=topology/tree" in text
    assert str(tmp_path) in text


def test_production_conf_has_no_local_paths(tmp_path):
    files = write_configs(load_profile("h100-ndr"), tmp_path)
    assert sorted(f.name for f in files) == ["gres.conf", "slurm.conf", "topology.conf"]
    conf = (tmp_path / "slurm.conf").read_text()
    # The profile names no GRES type (gpus.type): untyped, not the model name Slurm never saw.
    assert "NodeName=dgx[001-128] CPUs=112 RealMemory=2000000 Gres=gpu:8 Feature=h100,ndr" in conf
    assert "NodeAddr" not in conf and "StateSaveLocation" not in conf
    assert "AutoDetect=nvml\nNodeName=dgx[001-128] Name=gpu File=/dev/nvidia[0-7]\n" in (tmp_path / "gres.conf").read_text()
    assert "SwitchName=su1 Nodes=dgx[001-032]" in (tmp_path / "topology.conf").read_text()


def test_cli_slurm_conf_dev_files(tmp_path):
    out = run_cli("profile", "slurm-conf", "devcluster", "--devcluster", "--state-dir", tmp_path / "st",
                  "--out", tmp_path / "conf")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "conf/slurmdbd.conf").stat().st_mode & 0o777 == 0o600
    assert "CgroupPlugin=cgroup/v1" in (tmp_path / "conf/cgroup.conf").read_text()


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_second_cluster_and_down_touches_nothing_else(devcluster, tmp_path):
    from hpcorch.cluster.devcluster import DevCluster

    assert run_cli("devcluster", "up").returncode == 2  # already running: a clear refusal
    env = run_cli("devcluster", "env")
    assert env.stdout.strip() == f"export SLURM_CONF={devcluster.etc / 'slurm.conf'}"

    # A decoy that merely shares a daemon's name must survive `down`.
    decoy_exe = tmp_path / "slurmd"
    shutil.copy("/bin/sleep", decoy_exe)
    decoy = subprocess.Popen([str(decoy_exe), "300"])
    import tempfile

    state = tempfile.mkdtemp(prefix="hpcorch-second-", dir="/tmp")  # MariaDB's user must reach it
    os.chmod(state, 0o755)
    second = DevCluster("devcluster", state, port_base=18800)
    try:
        second.up(timeout_s=240)
        pids = {name: pid for name, pid in second.running().items() if pid}
        assert len(pids) >= 7
        first_before = devcluster.running()
        stopped = second.down()
        assert set(stopped) == set(pids)
        for pid in pids.values():
            assert not _alive(pid), f"pid {pid} still running after down"
        assert decoy.poll() is None, "down killed a process that only shares a daemon's name"
        assert devcluster.running() == first_before, "down of one cluster touched the other"
        assert devcluster.is_up()
    finally:
        second.down(log=lambda *_: None)
        decoy.kill()
        decoy.wait()
        shutil.rmtree(state, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
