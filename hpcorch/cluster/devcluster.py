"""A real Slurm cluster on this machine, from a cluster profile: ``hpcorch devcluster``.

munged, MariaDB, slurmdbd, slurmctld and one slurmd per emulated node, each with its own
ports, sockets, pid file and log under one state directory, so that it never touches a
system Slurm and ``down`` stops exactly what ``up`` started.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hpcorch.cluster.slurm import Slurm
from hpcorch.cluster.slurmconf import LocalCluster, write_configs
from hpcorch.errors import HpcorchError
from hpcorch.spec.profile import ClusterProfile, load_profile
from hpcorch.spec.units import format_time
from hpcorch.util.poll import PollTimeout, poll_until

DEFAULT_STATE_DIR = Path(os.environ.get("HPCORCH_DEVCLUSTER_DIR", "/tmp/hpcorch-devcluster"))
PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server"]
INSTALL_COMMAND = ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                   + " ".join(PACKAGES))
# scontrol and Slurm's other clients (with libslurm's plugins, which they load to read slurm.conf).
CLIENT_PACKAGES = ["slurm-client"]
MUNGE_SOCKET = "/run/munge/munge.socket.2"
REQUIRED = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "mariadb",
            "sacctmgr", "sinfo", "sbatch", "scontrol"]


class DevClusterError(HpcorchError):
    pass


@dataclass
class Daemon:
    """A process of the dev cluster, known by its pid file and its executable's name."""

    name: str
    pid_file: Path
    log_file: Path
    exe: str

    def pid(self) -> int | None:
        """The pid if the pid file names a live process of the expected program (never a
        recycled pid that now belongs to something else)."""
        import psutil

        try:
            pid = int(self.pid_file.read_text().split()[0])
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if Path(proc.exe()).name != self.exe and proc.name() != self.exe:
                return None
            return pid
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class DevCluster:
    """The dev cluster described by ``profile``, living in ``state_dir``."""

    def __init__(self, profile: ClusterProfile | str = "devcluster", state_dir: Path | None = None,
                 port_base: int = 16800):
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.local = LocalCluster(Path(state_dir) if state_dir else DEFAULT_STATE_DIR, port_base=port_base)
        self.etc = self.local.path("etc")
        self.env = {**os.environ, "SLURM_CONF": str(self.etc / "slurm.conf")}  # for the daemons
        self.slurm = Slurm(env={"SLURM_CONF": str(self.etc / "slurm.conf")})  # for the clients

    # ----- the daemons -------------------------------------------------------------------------
    def _p(self, *parts) -> Path:
        return self.local.path(*parts)

    def daemons(self) -> list[Daemon]:
        """Every daemon, in start order."""
        run, log = self._p("run"), self._p("log")
        out = [Daemon("munged", run / "munged.pid", log / "munged.log", "munged"),
               Daemon("mariadb", run / "mariadb.pid", log / "mariadb.log", "mariadbd"),
               Daemon("slurmdbd", run / "slurmdbd.pid", log / "slurmdbd.log", "slurmdbd"),
               Daemon("slurmctld", run / "slurmctld.pid", log / "slurmctld.log", "slurmctld")]
        out += [Daemon(f"slurmd {h}", run / f"slurmd-{h}.pid", log / f"slurmd-{h}.log", "slurmd")
                for h in self.profile.all_hosts()]
        return out

    def running(self) -> dict[str, int | None]:
        return {d.name: d.pid() for d in self.daemons()}

    def is_up(self) -> bool:
        """Up when every Slurm daemon and MariaDB run (munged may be the system's own)."""
        return all(pid for name, pid in self.running().items() if name != "munged")

    # ----- up --------------------------------------------------------------------------------
    def check_prerequisites(self) -> None:
        if os.geteuid() != 0:
            raise DevClusterError("the dev cluster needs root (slurmd, munged and mknod do)")
        missing = [b for b in REQUIRED if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
        if missing:
            raise DevClusterError(f"missing {', '.join(missing)}; install the Debian packages with:\n  "
                                  f"{INSTALL_COMMAND}\n(or run: hpcorch devcluster install)")

    def up(self, timeout_s: float = 180.0, log=print) -> float:
        """Start every daemon not already running and wait until every node is idle.
        Returns the seconds it took."""
        self.check_prerequisites()
        if self.is_up():
            raise DevClusterError(f"the dev cluster in {self.local.state_dir} is already running "
                                  f"(hpcorch devcluster status; hpcorch devcluster down)")
        start = time.monotonic()
        for sub in ("etc", "run", "log", "ctld", "spool", "nodes", "munge", "mysql"):
            self._p(sub).mkdir(parents=True, exist_ok=True)
        write_configs(self.profile, self.etc, self.local)
        for host in self.profile.all_hosts():
            make_node_root(self.local.node_root(host), self.profile, host)
        steps = [self._start_munged, self._start_mariadb, self._start_slurmdbd, self._register_cluster,
                 # After slurmctld: it registers gres/gpu as a TRES, which QOS GPU limits name.
                 self._start_slurmctld, self._register_qos, self._start_slurmds]
        for step in steps:
            step()
        self._wait_idle(timeout_s - (time.monotonic() - start))
        took = time.monotonic() - start
        log(f"dev cluster '{self.profile.name}' up in {took:.1f} s: {len(self.profile.all_hosts())} nodes idle; "
            f"export SLURM_CONF={self.etc / 'slurm.conf'}")
        return took

    def _daemon(self, name: str) -> Daemon:
        return next(d for d in self.daemons() if d.name == name)

    def _run_daemon(self, name: str, cmd: list[str], wait_for=None, timeout_s: float = 60.0) -> None:
        """Start a daemon (it forks into the background itself) and wait until it is alive."""
        daemon = self._daemon(name)
        if daemon.pid():
            return
        with open(daemon.log_file, "ab") as out:
            proc = subprocess.run(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s)
        if proc.returncode != 0:
            raise self._failed(daemon, f"exited with status {proc.returncode}")
        self._wait(lambda: daemon.pid() and (wait_for is None or wait_for()), timeout_s,
                   lambda: self._failed(daemon, "did not come up"))

    def _failed(self, daemon: Daemon, why: str) -> DevClusterError:
        return DevClusterError(f"{daemon.name} {why}; the end of {daemon.log_file}:\n{daemon.log_tail()}")

    @staticmethod
    def _wait(predicate, timeout_s: float, error) -> None:
        try:
            poll_until(lambda: bool(predicate()) or None, timeout_s, interval_s=0.1)
        except PollTimeout:
            raise error() from None

    def _start_munged(self) -> None:
        """Slurm 22.05's clients (sacctmgr among them) ignore AuthInfo=socket=... and always use
        munge's default socket: reuse a munged already serving it (and leave it alone on
        ``down``), or start ours there."""
        sock = Path(MUNGE_SOCKET)
        if self._munge_answers():
            return
        sock.parent.mkdir(parents=True, exist_ok=True)
        key = self._p("munge", "munge.key")
        if not key.exists():
            shutil.copyfile("/etc/munge/munge.key", key)
            key.chmod(0o400)
        self._run_daemon("munged", ["munged", "--force", f"--socket={sock}", f"--key-file={key}",
                                    f"--pid-file={self._p('run', 'munged.pid')}",
                                    f"--log-file={self._p('log', 'munged.log')}",
                                    f"--seed-file={self._p('munge', 'munged.seed')}"],
                         wait_for=self._munge_answers)

    @staticmethod
    def _munge_answers() -> bool:
        probe = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return probe.returncode == 0

    def _mysql(self, sql: str) -> None:
        subprocess.run(["mariadb", f"--socket={self._p('mysql', 'mysqld.sock')}", "-u", "root", "-e", sql],
                       check=True, capture_output=True, timeout=60)

    def _start_mariadb(self) -> None:
        daemon = self._daemon("mariadb")
        if daemon.pid():
            return
        mysql_dir, data = self._p("mysql"), self._p("mysql", "data")
        shutil.chown(mysql_dir, "mysql", "mysql")
        for parent in mysql_dir.parents:  # MariaDB runs as 'mysql': it must reach its folder
            if not parent.stat().st_mode & 0o001:
                raise DevClusterError(f"MariaDB runs as user 'mysql', which cannot enter {parent} "
                                      f"(mode {oct(parent.stat().st_mode & 0o777)}); choose a --state-dir "
                                      f"whose parents are world-searchable")
        if not (data / "mysql").exists():
            with open(daemon.log_file, "ab") as out:
                init = subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={data}",
                                       "--auth-root-authentication-method=socket", "--skip-test-db"],
                                      stdout=out, stderr=subprocess.STDOUT, timeout=180)
            if init.returncode != 0:
                raise self._failed(daemon, "could not initialise its data directory")
        sock = self._p("mysql", "mysqld.sock")
        with open(daemon.log_file, "ab") as out:
            subprocess.Popen(["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}",
                              f"--socket={sock}", f"--port={self.local.mysql_port}", "--bind-address=127.0.0.1",
                              f"--pid-file={daemon.pid_file}", "--skip-name-resolve",
                              "--innodb-buffer-pool-size=64M"],
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        shutil.chown(self._p("run"), "mysql", "mysql")
        self._wait(lambda: sock.exists() and daemon.pid(), 60, lambda: self._failed(daemon, "did not come up"))
        pw = self.local.db_password
        self._mysql(f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{pw}'; "
                    f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{pw}'; "
                    "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; "
                    "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;")

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _start_slurmdbd(self) -> None:
        self._run_daemon("slurmdbd", ["slurmdbd"], wait_for=lambda: self._port_open(self.local.dbd_port))

    def _register_cluster(self) -> None:
        name = self.profile.name
        shown = self.slurm.run("sacctmgr", "-n", "-P", "show", "cluster", "format=cluster", check=False)
        if name not in shown.split():
            self.slurm.run("sacctmgr", "-i", "add", "cluster", name)

    def _register_qos(self) -> None:
        """The profile's QOS in slurmdbd, with its limits enforced (DenyOnLimit: sbatch refuses
        a job over a limit instead of leaving it pending), and root allowed to use every one."""
        if not self.profile.qos:
            return
        known = self.slurm.run("sacctmgr", "-n", "-P", "show", "qos", "format=name", check=False).split()
        for name, qos in self.profile.qos.items():
            limits = sacctmgr_qos_limits(qos)
            if name in known:
                self.slurm.run("sacctmgr", "-i", "modify", "qos", "where", f"name={name}", "set", *limits)
            else:
                self.slurm.run("sacctmgr", "-i", "add", "qos", name, *limits)
        allowed = ",".join(dict.fromkeys(["normal", *self.profile.qos]))
        self.slurm.run("sacctmgr", "-i", "modify", "user", "where", "name=root", "set", f"qos={allowed}")

    def _start_slurmctld(self) -> None:
        self._run_daemon("slurmctld", ["slurmctld"], wait_for=lambda: self._port_open(self.local.ctld_port))

    def _start_slurmds(self) -> None:
        for host in self.profile.all_hosts():
            self._run_daemon(f"slurmd {host}", ["slurmd", "-N", host])

    def sinfo_states(self) -> dict[str, str]:
        out = self.slurm.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def _wait_idle(self, timeout_s: float) -> None:
        hosts = self.profile.all_hosts()
        ok = lambda: all(self.sinfo_states().get(h, "").rstrip("*") == "idle" for h in hosts)  # noqa: E731
        self._wait(ok, max(timeout_s, 10), lambda: DevClusterError(
            f"nodes did not become idle: {self.sinfo_states()}; see {self._p('log')}"))

    # ----- down ------------------------------------------------------------------------------
    def down(self, timeout_s: float = 60.0, log=print) -> list[str]:
        """Cancel the cluster's jobs, then stop exactly the daemons named by its pid files,
        in reverse start order. Returns the names of what was stopped."""
        if self._daemon("slurmctld").pid():
            self.slurm.run("scancel", "--full", "--quiet", "--user=root", check=False)
            self._drain_jobs()
        stopped = []
        for daemon in reversed(self.daemons()):
            pid = daemon.pid()
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            try:
                poll_until(lambda: daemon.pid() != pid, timeout_s, interval_s=0.1)  # noqa: B023 (called in this turn)
            except PollTimeout:
                os.kill(pid, signal.SIGKILL)
            stopped.append(daemon.name)
        log(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return stopped

    def _active_jobs(self) -> list[str]:
        return self.slurm.run("squeue", "-h", "-o", "%i", check=False).split()

    def _drain_jobs(self, timeout_s: float = 60.0) -> None:
        try:
            poll_until(lambda: not self._active_jobs(), timeout_s, interval_s=0.5)
        except PollTimeout:
            pass  # the daemons are stopped next either way

    # ----- reporting -------------------------------------------------------------------------
    def env_line(self) -> str:
        return f"export SLURM_CONF={self.etc / 'slurm.conf'}"

    def status(self) -> str:
        lines = [f"state directory: {self.local.state_dir}"]
        for name, pid in self.running().items():
            lines.append(f"  {name:<14} {'running, pid ' + str(pid) if pid else 'stopped'}")
        if self._daemon("slurmctld").pid():
            lines.append(self.slurm.run("sinfo", check=False).rstrip())
        return "\n".join(lines)


# What `rate` says for a link of this many Gb/s (4 lanes), as mlx5 ports write it.
_IB_SPEEDS = {100: "4X EDR", 200: "4X HDR", 400: "4X NDR", 800: "4X XDR"}


def make_node_root(root: Path, profile: ClusterProfile, host: str, mknod=os.mknod) -> None:
    """An emulated node's hardware below ``root``, healthy: one device file per GPU of its node
    type (``dev/nvidiaN``, the files gres.conf gives Slurm), ``dev/shm`` (a link to the
    machine's), and when the profile lists HCAs, each port's sysfs ``state``, ``phys_state``
    and ``rate`` (ACTIVE, LinkUp, the profile's rate). Run at every ``up``: it repairs faults a
    test injected (a removed device file, a port set DOWN). ``mknod`` is a test seam (it
    needs root)."""
    gpus = profile.node_types[profile.node_type_of(host)].gpus.count
    dev = root / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    for i in range(gpus):
        path = dev / f"nvidia{i}"
        if not path.exists():
            mknod(path, 0o666 | 0o020000, os.makedev(195, i))  # character device, like NVIDIA's
    shm = dev / "shm"
    if not shm.exists() and not shm.is_symlink():
        shm.symlink_to("/dev/shm")
    ib = profile.network.infiniband
    for hca in ib.hcas if ib else []:
        for port in range(1, ib.ports + 1):
            folder = root / "sys" / "class" / "infiniband" / hca / "ports" / str(port)
            folder.mkdir(parents=True, exist_ok=True)
            speed = _IB_SPEEDS.get(ib.link_rate_gbps, "4X")
            for name, text in (("state", "4: ACTIVE"), ("phys_state", "5: LinkUp"),
                               ("rate", f"{ib.link_rate_gbps} Gb/sec ({speed})")):
                (folder / name).write_text(text + "\n")


def sacctmgr_qos_limits(qos) -> list[str]:
    """``sacctmgr`` arguments for a profile QOS's limits; -1 clears a limit the profile leaves open."""
    job_tres = [f"node={qos.max_nodes if qos.max_nodes is not None else -1}",
                f"gres/gpu={qos.max_gpus if qos.max_gpus is not None else -1}"]
    per_node = qos.max_gpus_per_node if qos.max_gpus_per_node is not None else -1
    wall = format_time(qos.max_time_s) if qos.max_time_s else "-1"
    return [f"MaxWall={wall}", f"MaxTRESPerJob={','.join(job_tres)}", f"MaxTRESPerNode=gres/gpu={per_node}",
            "Flags=DenyOnLimit"]


def install(log=print, packages: list[str] | None = None) -> None:
    """Install the Debian packages the dev cluster needs (as root); ``packages`` narrows it, e.g.
    to CLIENT_PACKAGES for ``scontrol`` alone (no daemons, no MariaDB)."""
    command = INSTALL_COMMAND if packages is None else INSTALL_COMMAND.replace(
        " ".join(PACKAGES), " ".join(packages))
    log(f"+ {command}")
    subprocess.run(["bash", "-c", command], check=True)
