"""Remote submission's decisions and errors that need no Slurm: when a submission goes over SSH,
what is refused before anything connects, a full disk on the login node (a real tmpfs behind a
real sshd), and a remote job whose login node cannot be reached."""
import os

import pytest
from conftest import mounted_tmpfs
from sshd import free_port
from test_remote_ssh import one_line_error

pytestmark = pytest.mark.timeout(300)

JOB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "jobs", "gpt-tiny.yaml")


def test_a_login_profile_goes_remote_only_without_local_slurm(monkeypatch):
    import shutil

    from hpcorch.errors import ConfigError
    from hpcorch.remote.ops import wanted
    from hpcorch.spec.profile import load_profile

    with_login, local = load_profile("h100-ndr"), load_profile("local")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert wanted(with_login, None) and not wanted(with_login, False) and not wanted(local, None)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert not wanted(with_login, None) and wanted(with_login, True)
    with pytest.raises(ConfigError, match="login: expected a login: section"):
        wanted(local, True)


def test_what_is_refused_before_connecting(laptop, tmp_path):
    line = one_line_error(laptop.cli("submit", JOB, "-p", "local", "--remote"))
    assert "local" in line and "login: expected a login: section" in line
    line = one_line_error(laptop.cli("submit", JOB, "-p", "local", "--code", tmp_path))
    assert "--code syncs a folder to the login node: it needs --remote" in line
    laptop.profile("bad", "login:\n  host: x\n  workdir: \"a b\"\n")
    line = one_line_error(laptop.cli("submit", JOB, "-p", "bad", "--remote"))
    assert "bad.yaml: login.workdir: expected a path" in line


def test_a_full_disk_on_the_login_node_is_one_line_and_names_it(sshd, laptop, tmp_path):
    with mounted_tmpfs(tmp_path / "small", "256k") as workdir:
        laptop.add_host(sshd, "cluster")
        laptop.profile("cluster", sshd.login_block("cluster").replace(str(sshd.root / "work"), str(workdir)))
        code = tmp_path / "code"
        code.mkdir()
        (code / "weights.bin").write_bytes(os.urandom(1 << 20))  # incompressible: 1 MiB on a 256 KiB disk
        line = one_line_error(laptop.cli("submit", JOB, "-p", "cluster", "--remote", "--code", code))
        assert line.startswith(f"error: remote disk full at {sshd.user}@127.0.0.1:{sshd.port}:{workdir}/code/code")
        assert not list((workdir / "code").rglob("weights.bin*"))  # nothing half-written left there


def test_a_remote_job_whose_login_node_is_gone(laptop):
    from hpcorch.state.registry import Registry, RemoteRef

    closed = free_port()
    laptop.ssh_config.write_text(f"Host gone\n  HostName 127.0.0.1\n  Port {closed}\n")
    profile = laptop.profile("gone", "login:\n  host: gone\n")
    registry = Registry(laptop.home / "registry.sqlite")
    entry = registry.add("77", "gpt-tiny", profile, "slurm", "/scratch/run", "", remote=RemoteRef(profile, 3, "gone"))
    line = one_line_error(laptop.cli("status", str(entry.key)))
    assert f"127.0.0.1:{closed} refused the connection" in line  # nothing pulled: no offline answer
    listed = laptop.cli("ls")
    assert listed.returncode == 0 and "UNKNOWN (" in listed.stdout and "gone:/scratch/run" in listed.stdout
    local = registry.add("78", "gpt-tiny", "local", "local", str(laptop.root / "run"), "")
    line = one_line_error(laptop.cli("pull", str(local.key)))
    assert "ran from this machine" in line and "nothing to pull" in line


@pytest.mark.parametrize("key,value,expected", [
    ("host", "-oProxyCommand=x", "login.host: expected a host name"),
    ("key_file", "-oProxyCommand=x", "login.key_file: expected a path"),
    ("python", "python3;id", "login.python: expected a path"),
    ("python", "-c", "login.python: expected a path"),
    ("workdir", "$(id)", "login.workdir: expected a path"),
    ("proxy_jump", "-J x", "login.proxy_jump: expected [user@]host[:port]"),
    ("persist", "unlimited", "login.persist: expected a finite idle time"),
])
def test_login_values_that_would_reach_ssh_or_a_shell_are_checked(tmp_path, key, value, expected):
    import yaml

    from hpcorch.errors import ConfigError
    from hpcorch.spec.profile import load_profile

    login = {"host": "login.example.org", key: value}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "scheduler": "slurm", "login": login,
                                    "node_types": {"n": {"cpus": 4, "memory_mb": 1000}},
                                    "partitions": [{"name": "q", "nodes": "n1", "node_type": "n"}]}))
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_profile(path)


def test_a_relative_profile_path_is_recorded_so_that_any_folder_reaches_the_job(sshd, laptop, tmp_path):
    """``submit --remote -p profs/mine.yaml`` typed in one folder (a profile file outside the
    catalog, the login node a real sshd on loopback running the local scheduler): the record
    holds the path as any folder finds it, and status from another folder reconnects with it."""
    import json
    import subprocess
    import sys

    from trainhelp import TINY

    from hpcorch.util.poll import poll_until

    laptop.add_host(sshd, "cluster")
    laptop.profile("mine", sshd.login_block("cluster"))
    (laptop.root / "profs").mkdir()
    (laptop.home / "profiles" / "mine.yaml").rename(laptop.root / "profs" / "mine.yaml")
    sets = [a for s in [*TINY, "trainer.steps=8"] for a in ("--set", s)]
    out = laptop.cli("submit", JOB, "-p", "profs/mine.yaml", "--remote", "--json", "--run-dir",
                     tmp_path / "run", *sets, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    # the first line: a local scheduler behind ssh lets its ranks' lines through too (noted, not ours here)
    info = json.loads(out.stdout.splitlines()[0])
    assert info["profile"] == str(laptop.root / "profs" / "mine.yaml"), info
    key = str(info["key"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def status() -> dict | None:
        got = subprocess.run([sys.executable, "-m", "hpcorch", "status", key, "--json"], env=laptop.env,
                             cwd=elsewhere, capture_output=True, text=True, timeout=120, start_new_session=True)
        assert got.returncode == 0, got.stderr[-2000:]
        info = json.loads(got.stdout)
        return info if info["state"] in ("COMPLETED", "STOPPED") else None

    assert poll_until(status, 180, interval_s=2, what=f"job {key} ended")["state"] == "COMPLETED"
    listed = subprocess.run([sys.executable, "-m", "hpcorch", "ls", "--json"], env=laptop.env, cwd=elsewhere,
                            capture_output=True, text=True, timeout=120).stdout
    assert str(laptop.root / "profs" / "mine.yaml") in listed, listed


def test_a_remote_sweeps_points_under_the_local_runner_are_listed_here_as_they_start(sshd, laptop, tmp_path):
    """The login node's local runner registers a point when it starts it, after the submission
    has answered: ``ls`` here adopts them then (one sweep line, a number for each point)."""
    import json

    from trainhelp import TINY

    from hpcorch.util.poll import poll_until

    laptop.add_host(sshd, "cluster")
    profile = laptop.profile("mine", sshd.login_block("cluster"))
    root = tmp_path / "lsw"
    sets = [a for s in [*TINY, "trainer.steps=8", "resources.tasks_per_node=1", "trainer.global_batch=4"]
            for a in ("--set", s)]
    out = laptop.cli("sweep", "gpt-tiny", "-p", profile, "--remote", "--name", "lsw", "--root", root,
                     "--grid", "trainer.seed=1,2", "--json", *sets, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]

    def both_done():
        rows = json.loads(laptop.cli("ls", "--json").stdout)
        done = [r for r in rows if r["state"] == "COMPLETED"]
        return rows if len(rows) == 2 and len(done) == 2 else None

    rows = poll_until(both_done, 180, interval_s=2, what="both points listed here, completed")
    assert sorted(r["name"] for r in rows) == ["lsw/000-seed=1", "lsw/001-seed=2"], rows
    assert {r["sweep"] for r in rows} == {"lsw"} and all(r["host"] for r in rows), rows
    record = json.loads((laptop.home / "remote-sweeps" / "lsw.json").read_text())
    assert record["adopted"] == record["points"] == 2, record  # ls asks the login node no more
