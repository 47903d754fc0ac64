import subprocess
import sys

import pytest

from hpcorch.errors import HpcorchError
from hpcorch.registry import Registry

WRITER = """
import sys
from hpcorch.registry import Registry
reg = Registry(sys.argv[1])
for i in range(int(sys.argv[3])):
    reg.add(f"{sys.argv[2]}-{i}", "job", "local", "local", f"/runs/{sys.argv[2]}/{i}", "/j.yaml")
"""


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
