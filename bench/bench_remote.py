"""Remote operation over SSH (issue 12): what working from a laptop costs against working on the
login node itself, both measured in this run through a real OpenSSH sshd on loopback.

1. Warm `hpcorch status REF --json`: on the "login node" (its own HPCORCH_HOME, the job in its
   registry) against the laptop's (the agent already connected; the same command runs there).
   Goal: the laptop adds <= 0.3 s (median).
2. Cold connect: `hpcorch remote connect PROFILE` with no agent (TCP, SSH handshake, key auth,
   the agent's start and the remote version check), against `hpcorch --version` here (the
   CLI's own start-up). Goal <= 2 s.
3. Re-sync of an unchanged 10,000-file code tree through the same sshd (the tree of
   bench_remote_sync.py): bytes moved / tree bytes. Goal < 1 %.

The job is the tiny GPT submitted with --remote on a profile whose scheduler is `local` (no
Slurm needed): the login node runs it through submitit's local executor.

Usage: python bench/bench_remote.py [--repeat N] [--files N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

SETS = ["trainer.steps=20", "trainer.checkpoint.interval=10", "trainer.model.layers=1", "trainer.model.width=32",
        "trainer.model.heads=2", "trainer.model.seq_len=32", "trainer.global_batch=8", "trainer.micro_batch=8",
        "trainer.data.max_bytes=400000", "resources.tasks_per_node=1"]


def timed_cli(env: dict, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hpcorch", *args], env=env, capture_output=True, text=True,
                         timeout=300, cwd=env.get("BENCH_CWD", str(REPO)))
    wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"hpcorch {' '.join(args)} failed: {out.stdout}{out.stderr}")
    return wall, out


def median_of(repeat: int, env: dict, *args: str) -> float:
    return statistics.median(timed_cli(env, *args)[0] for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()

    from ssh_fixtures import RemoteClient
    from sshd import SSHServer, ensure_sshd

    why = ensure_sshd()
    if why:
        raise SystemExit(why)
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    login_home = work / "login-home"
    server = SSHServer(work / "sshd", env={"PYTHONPATH": str(REPO), "HPCORCH_HOME": str(login_home),
                                           "OMP_NUM_THREADS": "1"}).start()
    laptop = RemoteClient(work / "laptop")
    try:
        laptop.add_host(server, "cluster")
        profile = laptop.profile("cluster", server.login_block("cluster"))
        sets = [a for s in SETS for a in ("--set", s)]
        _, out = timed_cli(laptop.env, "submit", str(REPO / "jobs/gpt-tiny.yaml"), "-p", profile, "--remote",
                           "--run-dir", str(work / "run"), "--json", "--no-wait", *sets)
        key = str(json.loads(out.stdout)["key"])
        for _ in range(120):  # the local executor trains it on the "login node"
            state = json.loads(timed_cli(laptop.env, "status", key, "--json")[1].stdout)["state"]
            if state in ("COMPLETED", "FAILED"):
                break
            time.sleep(1)
        print(f"remote job {key}: {state}")

        login_env = {**os.environ, "HPCORCH_HOME": str(login_home), "PYTHONPATH": str(REPO)}
        remote_key = str(json.loads(timed_cli(laptop.env, "status", key, "--json")[1].stdout)["remote_key"])
        here = median_of(args.repeat, login_env, "status", remote_key, "--json")
        there = median_of(args.repeat, laptop.env, "status", key, "--json")
        mux = openssh_mux(server, work, args.repeat, [sys.executable, "-m", "hpcorch", "status", remote_key, "--json"])
        shell = openssh_mux(server, work, args.repeat, ["true"])
        print(f"\n1. warm status, median of {args.repeat}: on the login node {here:.3f} s, from the laptop "
              f"{there:.3f} s; added {there - here:+.3f} s (goal <= 0.3 s): "
              f"{'ok' if there - here <= 0.3 else 'MISSED'}")
        print(f"   baseline: OpenSSH with a warm ControlMaster running the same command: {mux:.3f} s "
              f"(added {mux - here:+.3f} s); `true` through it: {shell:.3f} s (sshd's session and the "
              f"user's login shell start-up, paid by any SSH client per command)")

        colds = []
        for _ in range(max(3, args.repeat // 3)):
            timed_cli(laptop.env, "remote", "disconnect")
            colds.append(timed_cli(laptop.env, "remote", "connect", profile)[0])
        cli = median_of(args.repeat, laptop.env, "--version")
        cold = statistics.median(colds)
        print(f"2. cold connect, median of {len(colds)}: {cold:.3f} s (the CLI alone: {cli:.3f} s; "
              f"goal <= 2 s): {'ok' if cold <= 2 else 'MISSED'}")

        resync(laptop, profile, work, args.files)
    finally:
        laptop.cleanup()
        server.stop()


def openssh_mux(server, work: Path, repeat: int, argv: list[str]) -> float:
    """Median wall time of OpenSSH's own client running ``argv`` over a warm ControlMaster."""
    import shlex

    config = work / "openssh_config"
    config.write_text(f"Host mux\n  HostName 127.0.0.1\n  Port {server.port}\n  User {server.user}\n"
                      f"  IdentityFile {server.client_key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n"
                      f"  UserKnownHostsFile {work / 'openssh_known_hosts'}\n  ControlMaster auto\n"
                      f"  ControlPath {work}/mux-%C\n  ControlPersist 60\n")
    (work / "openssh_known_hosts").write_text(server.known_hosts_line())
    command = ["ssh", "-F", str(config), "mux", shlex.join(argv)]
    subprocess.run(command, capture_output=True, timeout=60, check=True)  # the master starts here
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, timeout=60, check=True)
        times.append(time.perf_counter() - start)
    subprocess.run(["ssh", "-F", str(config), "-O", "exit", "mux"], capture_output=True, timeout=60)
    return statistics.median(times)


def resync(laptop, profile: str, work: Path, files: int) -> None:
    """Push a code tree twice through the sshd (a Session as the runner), from this process."""
    from bench_remote_sync import build_tree

    os.environ.update({k: laptop.env[k] for k in ("HPCORCH_HOME", "HPCORCH_SSH_CONFIG")})
    os.environ.pop("SSH_AUTH_SOCK", None)
    from hpcorch.remote import ops, sync

    total = build_tree(work / "tree", files)
    session = ops.session(profile)
    start = time.perf_counter()
    first = sync.push(session, work / "tree", str(work / "tree-remote"))
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    again = sync.push(session, work / "tree", str(work / "tree-remote"))
    again_s = time.perf_counter() - start
    moved = again.bytes_in + again.bytes_out
    print(f"3. {files} files, {total / 1e6:.1f} MB through sshd: first push {first_s:.2f} s, "
          f"{first.bytes_in + first.bytes_out:,} bytes; unchanged re-push {again_s:.2f} s, {moved:,} bytes "
          f"in {again.round_trips} round trip = {100 * moved / total:.4f} % of the tree (goal < 1 %): "
          f"{'ok' if moved < 0.01 * total else 'MISSED'}")


if __name__ == "__main__":
    main()
