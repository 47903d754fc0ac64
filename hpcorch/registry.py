"""The local registry of submitted jobs: SQLite, safe for concurrent CLI calls."""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import HpcorchError
from .spec.catalog import hpcorch_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
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
)
"""


@dataclass
class Entry:
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

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}


def default_path() -> Path:
    return hpcorch_home() / "registry.sqlite"


class Registry:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        # WAL lets readers and one writer work at once; busy_timeout makes concurrent writers
        # wait instead of failing with "database is locked".
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SCHEMA)
        return conn

    def add(self, job_id: str, name: str, profile: str, scheduler: str, run_dir: str, job_file: str,
            slurm_conf: str | None = None, exclude: str | None = None,
            resumed_from: int | None = None) -> Entry:
        conn = self._connect()
        try:
            cur = conn.execute(
                "INSERT INTO jobs (job_id, name, profile, scheduler, run_dir, job_file, slurm_conf, exclude,"
                " submitted, resumed_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, name, profile, scheduler, run_dir, job_file, slurm_conf, exclude, time.time(),
                 resumed_from))
            return self.get(str(cur.lastrowid), conn)
        finally:
            conn.close()

    def all(self) -> list[Entry]:
        conn = self._connect()
        try:
            return [Entry(*row) for row in conn.execute("SELECT * FROM jobs ORDER BY key")]
        finally:
            conn.close()

    def get(self, ref: str | int, conn: sqlite3.Connection | None = None) -> Entry:
        """A job by registry key (``3``), Slurm id (``s1234`` or ``1234`` if no key matches),
        name (newest first) or run directory."""
        ref = str(ref)  # a registry number may come as an int from Python callers
        own = conn is None
        conn = conn or self._connect()
        try:
            queries = [("SELECT * FROM jobs WHERE key = ?", ref if ref.isdigit() else None),
                       ("SELECT * FROM jobs WHERE job_id = ? ORDER BY key DESC", ref.removeprefix("s")),
                       ("SELECT * FROM jobs WHERE name = ? ORDER BY key DESC", ref),
                       ("SELECT * FROM jobs WHERE run_dir = ? ORDER BY key DESC", str(Path(ref).absolute()))]
            for sql, arg in queries:
                if arg is None:
                    continue
                row = conn.execute(sql, (arg,)).fetchone()
                if row:
                    return Entry(*row)
        finally:
            if own:
                conn.close()
        raise HpcorchError(f"no job {ref!r} in the registry {self.path} (see: hpcorch ls)")
