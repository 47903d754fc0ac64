"""Remote operation end to end: a laptop (its own HPCORCH_HOME, ssh config and known_hosts)
submits through a real OpenSSH sshd on loopback to the login node (this machine, with the
real dev cluster behind it and a registry of its own), then operates the job from there:
status, logs -f, cancel, resume, pull, and status offline from the pulled copy."""
import json
import subprocess
import sys
import time

import pytest
import yaml
from slurmhelp import Jobs, wait_progress
from test_submit import CLUSTER, _sets, reference  # noqa: F401 (fixture)
from trainhelp import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

JOB = str(REPO / "jobs" / "gpt-tiny.yaml")


@pytest.fixture(scope="module")
def login_node(sshd_factory, devcluster, tmp_path_factory):
    """An sshd whose sessions see the dev cluster and a login-node registry of their own."""
    home = tmp_path_factory.mktemp("login-home")
    return sshd_factory("login", env={"SLURM_CONF": str(devcluster.etc / "slurm.conf"),
                                      "HPCORCH_HOME": str(home), "OMP_NUM_THREADS": "1"})


@pytest.fixture
def jobs(slurm):
    tracked = Jobs(slurm)
    yield tracked
    tracked.cleanup()


def _profile(laptop, server, alias: str, path=None):
    """The devcluster profile (same name, same cluster) with a login: section for ``alias``."""
    data = yaml.safe_load((REPO / "hpcorch/profiles/devcluster.yaml").read_text())
    data["login"] = yaml.safe_load(server.login_block(alias))["login"]
    path = path or laptop.root / f"{alias}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _submitted(laptop, out, jobs) -> dict:
    assert out.returncode == 0, out.stdout + out.stderr
    info = json.loads(out.stdout)
    jobs.ids.append(info["job_id"])
    return info


def _wait_state(laptop, key, wanted: set[str], timeout_s=240) -> dict:
    from hpcorch.util.poll import poll_until

    def reached():
        out = laptop.cli("status", key, "--json")
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        if info["state"].split()[0] in {"FAILED", "NODE_FAIL", "TIMEOUT"} - wanted:
            raise AssertionError(f"job {key} ended {info['state']}")
        return info if info["state"].split()[0] in wanted else None

    return poll_until(reached, timeout_s, interval_s=1.0, what=f"remote job {key} {wanted}")


def _agent_bytes_in(laptop) -> int:
    return sum(a["bytes_in"] for a in laptop.agents())


def test_submit_status_logs_cancel_resume_and_pull_through_ssh(login_node, laptop, jobs, tmp_path, reference):
    laptop.add_host(login_node, "cluster")
    profile = _profile(laptop, login_node, "cluster")
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "notes.txt").write_text("user code travels with the job\n")
    run = tmp_path / "run"  # a path on the login node (the same disk here)
    sets = _sets(["environment.HPCORCH_STEP_DELAY_S=0.2"])
    first = _submitted(laptop, laptop.cli("submit", JOB, "-p", profile, "--remote", "--code", code,
                                          "--run-dir", run, "--json", *sets), jobs)
    key = str(first["key"])
    assert first["host"].endswith(f"127.0.0.1:{login_node.port}") and first["run_dir"] == str(run)
    synced = login_node.root / "work" / "code" / "code" / "pkg" / "notes.txt"
    assert synced.read_text() == "user code travels with the job\n"
    wait_progress(run, 30)

    before = _agent_bytes_in(laptop)
    follow = subprocess.Popen([sys.executable, "-m", "hpcorch", "logs", key, "-f"], env=laptop.env,
                              cwd=laptop.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        time.sleep(3)
        cancelled = laptop.cli("cancel", key)
        assert cancelled.returncode == 0 and "cancel sent" in cancelled.stdout, cancelled.stderr
        followed, errors = follow.communicate(timeout=180)
    finally:
        follow.kill()
    assert follow.returncode == 0, errors
    assert _wait_state(laptop, key, {"CANCELLED"})["step"] > 0
    log_file = next((run / "submitit").glob(f"{first['job_id']}/*_0_log.out"))
    assert followed and followed.strip().splitlines()[-1] in log_file.read_text()
    # `logs -f` moved the log once (plus the cancel's and framing's few bytes), never re-read it.
    moved = _agent_bytes_in(laptop) - before
    assert moved <= log_file.stat().st_size + 16384, (moved, log_file.stat().st_size)

    again = _submitted(laptop, laptop.cli("resume", key, "--json"), jobs)
    done = _wait_state(laptop, str(again["key"]), {"COMPLETED"})
    assert done["step"] == 150 and done["host"] == first["host"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights_sha256"] == reference["weights_sha256"]
    listed = laptop.cli("ls").stdout
    assert f"{first['host']}:{run}" in listed and "CANCELLED" in listed and "COMPLETED" in listed
    rows = {row["key"]: row for row in json.loads(laptop.cli("ls", "--json").stdout)}
    assert 0 < rows[again["key"]]["goodput"] <= 1  # the login node's own accounting, carried back

    pulled = laptop.cli("pull", str(again["key"]))
    assert pulled.returncode == 0, pulled.stderr
    folder = laptop.home / "pulled" / f"{again['key']}-gpt-tiny"
    assert json.loads((folder / "summary.json").read_text()) == summary
    assert (folder / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert " 0 bytes" in laptop.cli("pull", str(again["key"])).stdout  # nothing changed, nothing moves

    # Offline: the login node cannot be reached; status answers from the pulled copy.
    laptop.cli("remote", "disconnect")
    data = yaml.safe_load(profile.read_text())
    data["login"]["host"] = "nowhere"
    profile.write_text(yaml.safe_dump(data))
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + "Host nowhere\n  HostName 127.0.0.1\n  Port 1\n")
    offline = laptop.cli("status", str(again["key"]), "--json")
    assert offline.returncode == 0, offline.stderr
    info = json.loads(offline.stdout)
    assert info["state"].startswith("UNKNOWN") and "127.0.0.1:1" in info["state"] and info["step"] == 150


def test_submit_through_a_jump_host_from_an_included_ssh_config(login_node, sshd_factory, laptop, jobs,
                                                                  tmp_path, reference):
    jump = sshd_factory("jump")
    included = laptop.root / "cluster.conf"
    included.write_text(login_node.ssh_config("behind", laptop.known_hosts, extra="  ProxyJump gate\n") +
                        jump.ssh_config("gate", laptop.known_hosts))
    laptop.ssh_config.write_text(f"Include {included}\n")
    for server in (login_node, jump):
        with open(laptop.known_hosts, "a") as out:
            out.write(server.known_hosts_line())
    profile = _profile(laptop, login_node, "behind")
    run = tmp_path / "run"
    accepted = jump.accepted()
    check = laptop.cli("submit", JOB, "-p", profile, "--remote", "--check", *_sets())
    assert check.returncode == 0 and "to start at" in check.stdout, check.stdout + check.stderr
    assert not run.exists()  # asked, nothing submitted
    job = _submitted(laptop, laptop.cli("submit", JOB, "-p", profile, "--remote", "--run-dir", run, "--json",
                                        *_sets()), jobs)
    assert jump.accepted() == accepted + 1  # one login, through the jump host, for both commands
    assert _wait_state(laptop, str(job["key"]), {"COMPLETED"})["step"] == 150
    assert json.loads((run / "summary.json").read_text())["weights_sha256"] == reference["weights_sha256"]
