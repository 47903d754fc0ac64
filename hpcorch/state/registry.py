"""The local registry of submitted jobs: SQLite, safe for concurrent CLI calls.

Rows are read by column name, and the schema carries a version (``PRAGMA user_version``):
each entry of :data:`MIGRATIONS` brings a registry one version further, so a registry written
by an older hpcorch opens and is upgraded in place. On a network file system (where
``~/.hpcorch`` usually lives on clusters) SQLite's WAL mode is unsafe; the classic rollback
journal is used there instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.spec.catalog import hpcorch_home
from hpcorch.state.rundir import RunDir

MIGRATIONS = [
    # 1: the first registry.
    """CREATE TABLE IF NOT EXISTS jobs (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,          -- Slurm job id, or the local controller's pid
        name TEXT NOT NULL,
        profile TEXT NOT NULL,         -- as given: a name or a path
        scheduler TEXT NOT NULL,
        run_dir TEXT NOT NULL,
        job_file TEXT NOT NULL,
        slurm_conf TEXT,               -- SLURM_CONF at submit time, so status asks the same cluster
        exclude TEXT,
        submitted REAL NOT NULL,
        resumed_from INTEGER
    )""",
    # 2: a local job's controller start time, so a reused pid is never taken for the job.
    "ALTER TABLE jobs ADD COLUMN started REAL",
    # 3: the user's template folder, so that `resume` renders the script the same way.
    "ALTER TABLE jobs ADD COLUMN template_dir TEXT",
    # 4: nodes kept out of later jobs of a profile (a failed pre-flight, a node that killed a job).
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        profile TEXT NOT NULL,         -- the profile's name (not its path): one cluster
        node TEXT NOT NULL,
        reason TEXT NOT NULL,
        since REAL NOT NULL,
        until REAL NOT NULL,           -- excluded while now < until; cleared rows keep their history
        job_id TEXT
    )""",
    # 5: a job submitted over SSH: the login node's registry holds it; this row points there.
    "ALTER TABLE jobs ADD COLUMN remote TEXT",  # JSON of a RemoteRef
]

# File systems on which SQLite's WAL (shared memory between processes) is unsafe.
NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph",
                        "fuse.sshfs", "fuse.glusterfs", "glusterfs", "panfs", "afs", "9p", "fuse.ceph"}


@dataclass
class Entry:
    """One submitted job as the registry records it."""

    key: int
    job_id: str
    name: str
    profile: str
    scheduler: str
    run_dir: str
    job_file: str
    slurm_conf: str | None
    exclude: str | None
    submitted: float
    resumed_from: int | None
    started: float | None = None
    template_dir: str | None = None
    remote: str | None = None  # JSON of a RemoteRef; None for a job submitted from this machine

    @property
    def remote_ref(self) -> RemoteRef | None:
        return RemoteRef.from_json(self.remote) if self.remote else None

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}

    @property
    def pulled_dir(self) -> Path:
        """Where ``hpcorch pull`` keeps a remote job's observable files on this machine."""
        return hpcorch_home() / "pulled" / f"{self.key}-{self.name}"

    @property
    def observable_dir(self) -> str:
        """The folder to read this job's files from: its run directory, or a remote job's copy
        from its last ``hpcorch pull``."""
        return str(self.pulled_dir) if self.remote else self.run_dir

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Entry:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: row[k] for k in row.keys() if k in names})  # noqa: SIM118 (a Row iterates values)


@dataclass
class RemoteRef:
    """Where a job submitted over SSH lives: the profile that reaches the login node, the job's
    number in the login node's own registry, and the host (for messages)."""

    profile: str
    key: int
    host: str

    def to_json(self) -> str:
        import json

        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RemoteRef:
        import json

        return cls(**json.loads(text))


@dataclass
class Quarantined:
    """One quarantine of a node: why, since when, until when, and which job found it."""

    profile: str
    node: str
    reason: str
    since: float
    until: float
    job_id: str | None = None

    def active(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.until


def default_path() -> Path:
    return hpcorch_home() / "registry.sqlite"


def file_system_type(path: Path, mounts: str | None = None) -> str:
    """The type of the file system holding ``path`` (from ``/proc/mounts``; "" if unknown)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    target, best, kind = str(Path(path).resolve()), -1, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def journal_mode(path: Path, mounts: str | None = None) -> str:
    """WAL where it is safe (a local disk), the rollback journal on network file systems."""
    return "DELETE" if file_system_type(path, mounts) in NETWORK_FILE_SYSTEMS else "WAL"


class Registry:
    def __init__(self, path: Path | None = None):
        # No folder yet: one is made on the first connection, so that a dry run that only
        # asks whether a registry exists (plan, render, submit --dry-run) creates nothing.
        self.path = Path(path) if path else default_path()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection with the schema brought up to date; SQLite's own failures (a corrupted
        or foreign file) become one clear error naming the file."""
        conn = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # busy_timeout makes concurrent writers wait instead of failing with "database is locked".
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute(f"PRAGMA journal_mode = {journal_mode(self.path.parent)}")
            self._migrate(conn)
            yield conn
        except sqlite3.DatabaseError as exc:
            raise HpcorchError(f"{self.path}: not a usable hpcorch registry ({exc}); move it aside "
                               f"to start a new one") from None
        finally:
            if conn is not None:
                conn.close()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise HpcorchError(f"{self.path}: written by a newer hpcorch (schema {version}, this one knows "
                               f"{len(MIGRATIONS)}); upgrade hpcorch")
        if version == len(MIGRATIONS):
            return
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and _has_table(conn, "jobs"):
                version = 1  # written before versions were recorded: the first schema
            for number, statement in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def add(self, job_id: str, name: str, profile: str, scheduler: str, run_dir: str, job_file: str,
            slurm_conf: str | None = None, exclude: str | None = None,
            resumed_from: int | None = None, started: float | None = None,
            template_dir: str | None = None, remote: RemoteRef | None = None) -> Entry:
        row = {"job_id": job_id, "name": name, "profile": profile, "scheduler": scheduler,
               "run_dir": run_dir, "job_file": job_file, "slurm_conf": slurm_conf, "exclude": exclude,
               "submitted": time.time(), "resumed_from": resumed_from, "started": started,
               "template_dir": template_dir, "remote": remote.to_json() if remote else None}
        with self._connect() as conn:
            cur = conn.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                               tuple(row.values()))
            return self._get(str(cur.lastrowid), conn)

    def all(self) -> list[Entry]:
        with self._connect() as conn:
            return [Entry.from_row(row) for row in conn.execute("SELECT * FROM jobs ORDER BY key")]

    def get(self, ref: str | int) -> Entry:
        """A job by registry key (``3``), Slurm id (``s1234`` or ``1234`` if no key matches),
        name (newest first) or run directory."""
        with self._connect() as conn:
            return self._get(str(ref), conn)

    def _get(self, ref: str, conn: sqlite3.Connection) -> Entry:
        queries = [("SELECT * FROM jobs WHERE key = ?", ref if ref.isdigit() else None),
                   ("SELECT * FROM jobs WHERE job_id = ? ORDER BY key DESC", ref.removeprefix("s")),
                   ("SELECT * FROM jobs WHERE name = ? ORDER BY key DESC", ref),
                   ("SELECT * FROM jobs WHERE run_dir = ? ORDER BY key DESC", os.path.abspath(ref))]
        for sql, arg in queries:
            if arg is None:
                continue
            row = conn.execute(sql, (arg,)).fetchone()
            if row:
                return Entry.from_row(row)
        raise HpcorchError(f"no job {ref!r} in the registry {self.path} (see: hpcorch ls)")


    # ----- quarantined nodes ----------------------------------------------------------------
    def quarantine(self, profile: str, node: str, reason: str, hours: float, job_id: str | None = None) -> None:
        """Keep ``node`` out of ``profile``'s jobs for ``hours``: a node already quarantined
        gets the later expiry and the newer reason (one active row per node)."""
        now = time.time()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE quarantine SET until = ? WHERE profile = ? AND node = ? AND until > ?",
                         (now, profile, node, now))
            conn.execute("INSERT INTO quarantine (profile, node, reason, since, until, job_id) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (profile, node, reason, now, now + hours * 3600, job_id))
            conn.execute("COMMIT")

    def quarantined(self, profile: str | None = None, history: bool = False) -> list[Quarantined]:
        """Nodes in quarantine now (of ``profile``, or every profile's); ``history``: every
        quarantine ever recorded, expired and cleared ones included."""
        sql, args = "SELECT profile, node, reason, since, until, job_id FROM quarantine WHERE 1", []
        if profile is not None:
            sql, args = sql + " AND profile = ?", [profile]
        if not history:
            sql, args = sql + " AND until > ?", args + [time.time()]
        with self._connect() as conn:
            return [Quarantined(**dict(row)) for row in conn.execute(sql + " ORDER BY since", args)]

    def release(self, node: str, profile: str | None = None) -> int:
        """End ``node``'s quarantine now (history kept); returns how many were active."""
        now = time.time()
        sql, args = "UPDATE quarantine SET until = ? WHERE node = ? AND until > ?", [now, node, now]
        if profile is not None:
            sql, args = sql + " AND profile = ?", args + [profile]
        with self._connect() as conn:
            return conn.execute(sql, args).rowcount


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


# ----- a job's reference -> its run directory ---------------------------------------------------
def resolve(ref: str, registry: Registry | None = None) -> tuple[RunDir, Entry | None]:
    """The run directory of ``ref`` (a run directory path, or a job in the registry; a remote
    job: its copy from ``hpcorch pull``) and its registry entry (None for a path)."""
    if RunDir.looks_like_run(ref):
        return RunDir.open(ref), None
    entry = (registry or Registry()).get(ref)
    if not entry.remote:
        return RunDir.open(entry.run_dir), entry
    pulled = entry.pulled_dir
    if not pulled.is_dir():
        raise HpcorchError(f"job {entry.job_id} (hpcorch #{entry.key}) ran on {entry.remote_ref.host}: "
                           f"fetch its run directory first with `hpcorch pull {entry.key}`")
    return RunDir.open(pulled), entry


def run_of(ref: str, registry: Registry | None = None) -> RunDir:
    """The run directory of ``ref``, as :func:`resolve` finds it."""
    return resolve(ref, registry)[0]
