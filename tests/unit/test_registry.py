import subprocess
import sys
from pathlib import Path

import pytest

from hpcorch.errors import HpcorchError
from hpcorch.state.registry import Registry

WRITER = """
import sys
from hpcorch.state.registry import Registry
reg = Registry(sys.argv[1])
for i in range(int(sys.argv[3])):
    reg.add(f"{sys.argv[2]}-{i}", "job", "local", "local", f"/runs/{sys.argv[2]}/{i}", "/j.yaml")
"""


@pytest.mark.slow
def test_concurrent_writers_do_not_corrupt(tmp_path):
    db = tmp_path / "reg.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"w{n}", "40"]) for n in range(6)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    entries = Registry(db).all()
    assert len(entries) == 240
    assert len({e.key for e in entries}) == 240
    assert {e.job_id for e in entries} == {f"w{n}-{i}" for n in range(6) for i in range(40)}
    check = subprocess.run(["python3", "-c", f"import sqlite3; print(sqlite3.connect('{db}').execute("
                            "'PRAGMA integrity_check').fetchone()[0])"], capture_output=True, text=True, timeout=30)
    assert check.stdout.strip() == "ok"


def test_lookup_by_key_id_name_and_run_dir(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    a = reg.add("1001", "alpha", "devcluster", "slurm", str(tmp_path / "ra"), "/a.yaml")
    b = reg.add("1002", "alpha", "devcluster", "slurm", str(tmp_path / "rb"), "/b.yaml")
    assert reg.get(str(a.key)).job_id == "1001"
    assert reg.get("s1002").key == b.key and reg.get("1002").key == b.key
    assert reg.get("alpha").key == b.key  # the newest of that name
    assert reg.get(str(tmp_path / "ra")).key == a.key
    with pytest.raises(HpcorchError, match="no job"):
        reg.get("nope")


def test_an_old_registry_opens_and_is_migrated(tmp_path):
    """A registry written before schema versions (the first wave's table) keeps its rows."""
    import sqlite3

    from hpcorch.state.registry import MIGRATIONS

    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(MIGRATIONS[0])
    conn.execute("INSERT INTO jobs (job_id, name, profile, scheduler, run_dir, job_file, submitted)"
                 " VALUES ('77', 'old', 'devcluster', 'slurm', '/runs/old', '/runs/old/job.yaml', 1.0)")
    conn.commit()
    conn.close()
    reg = Registry(db)
    old = reg.get("77")
    assert (old.name, old.started) == ("old", None)
    new = reg.add("78", "new", "local", "local", "/runs/new", "/j.yaml", started=123.5)
    assert reg.get(new.key).started == 123.5
    version = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(MIGRATIONS)


def test_a_corrupted_or_newer_registry_is_one_clear_error(tmp_path):
    import sqlite3

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HpcorchError, match=f"{bad}: not a usable hpcorch registry"):
        Registry(bad).all()
    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(HpcorchError, match="newer hpcorch"):
        Registry(newer).all()


@pytest.mark.parametrize("fstype,mode", [("nfs4", "DELETE"), ("lustre", "DELETE"), ("ext4", "WAL")])
def test_network_file_systems_get_the_rollback_journal(tmp_path, fstype, mode):
    from hpcorch.state.registry import journal_mode

    mounts = f"/dev/sda1 / ext4 rw 0 0\nserver:/home {tmp_path} {fstype} rw 0 0\n"
    assert journal_mode(tmp_path / "sub", mounts) == mode
    assert journal_mode(Path("/elsewhere"), mounts) == "WAL"
