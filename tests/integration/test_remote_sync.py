"""hpcorch.remote.sync through LocalRunner: real subprocesses (`bash -c`), real files."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import pytest
from conftest import mounted_tmpfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcorch.errors import HpcorchError, RemoteError
from hpcorch.remote import files, sync
from hpcorch.remote.client import remote_command
from hpcorch.state.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _this_checkout(monkeypatch):
    # The "remote" interpreter must import this checkout's hpcorch, whatever is installed.
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.fixture
def runner():
    return sync.LocalRunner()


def make_tree(root: Path, n: int = 20) -> int:
    total = 0
    for i in range(n):
        path = root / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (f"# module {i}\n" + "x = 1\n" * (50 + i)).encode()
        path.write_bytes(data)
        total += len(data)
    return total


def tree(root: Path) -> dict:
    """What a tree holds: content and mode of each file, target of each link."""
    found = {}
    for rel, entry in files.manifest(str(root)).items():
        path = root / rel
        found[rel] = ("L", entry[1]) if entry[0] == "L" else (path.read_bytes(), entry[2])
    return found


def test_shell_line_keeps_home_expansion_and_quotes_the_rest():
    assert remote_command(["~/venv/bin/python", "-m", "x", "a b", "~"], cwd="~/w d") == \
        "cd ~/'w d' && ~/venv/bin/python -m x 'a b' ~"
    assert remote_command("echo $HOME") == "echo $HOME"
    out = subprocess.run(["bash", "-c", remote_command(["echo", "~/x", "$HOME;"])], capture_output=True, text=True)
    assert out.stdout.split() == [os.path.expanduser("~/x"), "$HOME;"]


def test_first_push_moves_everything_then_an_unchanged_push_moves_only_a_digest(tmp_path, runner):
    total = make_tree(tmp_path / "src")
    first = sync.push(runner, tmp_path / "src", str(tmp_path / "dst"))
    assert (first.files_sent, first.bytes_sent, first.round_trips) == (20, total, 2)
    assert tree(tmp_path / "dst") == tree(tmp_path / "src")
    again = sync.push(runner, tmp_path / "src", str(tmp_path / "dst"))
    assert (again.files_sent, again.bytes_sent, again.round_trips) == (0, 0, 1)
    assert again.bytes_out == 0 and again.bytes_in < 64  # "same", framed and compressed


def test_only_the_changed_file_moves_and_deleted_files_go(tmp_path, runner):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    sync.push(runner, src, str(dst))
    changed = src / "pkg1" / "mod4.py"
    changed.write_bytes(changed.read_bytes().replace(b"x = 1", b"y = 2"))  # same size: mtime tells
    for doomed in (src / "pkg0").iterdir():
        doomed.unlink()
    stats = sync.push(runner, src, str(dst))
    assert (stats.files_sent, stats.bytes_sent, stats.files_deleted) == (1, changed.stat().st_size, 7)
    assert stats.bytes_out < 1024
    assert tree(dst) == tree(src) and not (dst / "pkg0").exists()  # the emptied folder goes too


def test_mtime_and_mode_are_kept_and_links_inside_the_tree_stay_links(tmp_path, runner):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "bin").mkdir(parents=True)
    script = src / "bin" / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o750)
    os.utime(script, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (src / "run").symlink_to("bin/run.sh")
    (src / "outside").symlink_to("/etc/passwd")
    (src / "up").symlink_to("../elsewhere")
    sync.push(runner, src, str(dst))
    st_ = (dst / "bin" / "run.sh").stat()
    assert (st_.st_mtime_ns, st_.st_mode & 0o7777) == (1_600_000_000_123_456_789, 0o750)
    assert os.readlink(dst / "run") == "bin/run.sh"
    assert not (dst / "outside").is_symlink() and not (dst / "up").is_symlink()
    script.chmod(0o700)  # a mode change alone is a change
    assert sync.push(runner, src, str(dst)).files_sent == 1 and (dst / "bin" / "run.sh").stat().st_mode & 0o777 == 0o700


def test_excluded_names_are_neither_sent_nor_deleted(tmp_path, runner):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, 3)
    for junk in (".git/HEAD", "pkg0/__pycache__/m.pyc", "x.egg-info/PKG-INFO", ".hypothesis/db"):
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_text("junk")
    sync.push(runner, src, str(dst))
    assert not (dst / ".git").exists() and not (dst / "x.egg-info").exists()
    (dst / "pkg0" / "__pycache__").mkdir()
    (dst / "pkg0" / "__pycache__" / "remote.pyc").write_text("made there")
    assert sync.push(runner, src, str(dst)).round_trips == 1
    assert (dst / "pkg0" / "__pycache__" / "remote.pyc").exists()


def test_output_printed_by_login_scripts_before_the_answer_is_skipped(tmp_path):
    class Chatty(sync.LocalRunner):
        def run(self, argv, **kw):
            return super().run("echo 'Welcome to the cluster!'; " + remote_command(argv), **kw)

    make_tree(tmp_path / "src", 3)
    assert sync.push(Chatty(), tmp_path / "src", str(tmp_path / "dst")).files_sent == 3
    assert sync.push(Chatty(), tmp_path / "src", str(tmp_path / "dst")).round_trips == 1


def test_a_missing_remote_python_is_named(tmp_path):
    make_tree(tmp_path / "src", 1)
    with pytest.raises(RemoteError, match="python-nowhere not found"):
        sync.push(sync.LocalRunner(python="python-nowhere"), tmp_path / "src", str(tmp_path / "dst"))


# ----- receive refuses hostile input -------------------------------------------------------
def crafted(members, delete=()) -> bytes:
    """receive's input: a header and a tar.gz of (TarInfo, data) members."""
    header = zlib.compress(json.dumps({"delete": list(delete)}).encode())
    body = io.BytesIO()
    with gzip.GzipFile(fileobj=body, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return struct.pack(">Q", len(header)) + header + body.getvalue()


def member(name, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("members,delete", [
    ([(member("ok.py"), b"fine"), (member("../evil.py"), b"pwned")], ()),
    ([(member("ok.py"), b"fine"), (member("/tmp/evil.py"), b"pwned")], ()),
    ([(member("a/./b"), b"x")], ()),
    ([(member("ok.py"), b"fine"), (member("lnk", tarfile.SYMTYPE, "../../outside"), b"")], ()),
    ([(member("lnk", tarfile.SYMTYPE, "/etc"), b"")], ()),
    ([(member("hard", tarfile.LNKTYPE, "/etc/passwd"), b"")], ()),
    ([(member("dev", tarfile.CHRTYPE), b"")], ()),
    ([(member("escape/evil.py"), b"through the link")], ()),   # escape -> outside, already there
    ([], ("../victim",)),
    ([], ("escape/victim",)),
], ids=["dotdot", "absolute", "dot", "link-up", "link-abs", "hardlink", "device", "through-link",
        "delete-dotdot", "delete-through-link"])
def test_receive_refuses_paths_that_leave_the_tree(tmp_path, members, delete):
    dst, outside = tmp_path / "dst", tmp_path / "outside"
    dst.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    (tmp_path / "victim").write_text("keep me")
    (dst / "escape").symlink_to(outside)
    (dst / "ok.py").write_text("old")
    done = subprocess.run([sys.executable, "-m", "hpcorch.remote.files", "receive", str(dst)],
                          input=crafted(members, delete), capture_output=True)
    assert done.returncode == files.EXIT_REFUSED, done.stderr
    assert b"refused" in done.stderr
    assert sorted(p.name for p in outside.iterdir()) == ["victim"] and (outside / "victim").read_text() == "keep me"
    assert (tmp_path / "victim").exists() and not (tmp_path / "evil.py").exists()
    assert sorted(p.name for p in dst.iterdir()) == ["escape", "ok.py"]  # no temporary file left
    assert (dst / "ok.py").read_text() == "old"  # staged files are renamed only once all are good


# ----- a full disk, for real ---------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    with mounted_tmpfs(tmp_path / "small", "256k") as mount:
        yield mount


def test_a_full_remote_disk_is_named_and_leaves_no_half_written_file(tmp_path, small_fs, runner):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.py").write_text("print('fits')\n")
    sync.push(runner, src, str(small_fs / "code"))
    (src / "small.py").write_text("print('changed, and never half written')\n")
    (src / "big.bin").write_bytes(os.urandom(400 * 1024))  # beyond the 256 KiB file system
    with pytest.raises(sync.RemoteDiskFull, match=f"remote disk full at localhost:{small_fs}/code"):
        sync.push(runner, src, str(small_fs / "code"))
    assert sorted(p.name for p in (small_fs / "code").iterdir()) == ["small.py"]
    assert (small_fs / "code" / "small.py").read_text() == "print('fits')\n"  # the old one, whole
    (src / "big.bin").unlink()
    assert sync.push(runner, src, str(small_fs / "code")).files_sent == 1  # room again: it goes on
    assert tree(small_fs / "code") == tree(src)


# ----- pull --------------------------------------------------------------------------------
def make_run(root: Path) -> RunDir:
    run = RunDir(root).create()
    run.metrics.write_text("".join(json.dumps({"step": s, "loss": 1 / (s + 1)}) + "\n" for s in range(100)))
    run.append_event("start")
    run.summary_file.write_text(json.dumps({"steps": 100}))
    run.batch_log("out", "7").write_text("hello from the batch script\n" * 20)
    run.exit_record(0, 1).parent.mkdir(parents=True)
    run.exit_record(0, 1).write_text("{}")
    rank_log = Path(run.rank_log_pattern("out").replace("%j", "7").replace("%t", "0"))
    rank_log.parent.mkdir(parents=True)
    rank_log.write_text("rank 0 says hi\n")
    (rank_log.parent / "7_submitted.pkl").write_bytes(os.urandom(1000))
    run.checkpoint_layout.step_dir(100).mkdir(parents=True)
    (run.checkpoint_layout.step_dir(100) / "model.pt").write_bytes(os.urandom(100_000))
    return run


def test_pull_moves_only_new_bytes(tmp_path, runner):
    remote = make_run(tmp_path / "remote")
    local = tmp_path / "local"
    first = sync.pull(runner, str(remote.root), local)
    pulled = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert pulled == {"metrics.jsonl", "events.jsonl", "summary.json", "logs/7.out",
                      "exits/attempt-0/rank-1.json", "submitit/7/7_0_log.out"}  # no checkpoint, no pickle
    assert first.files_sent == 6 and first.round_trips == 1
    for rel in pulled:
        assert (local / rel).read_bytes() == (remote.root / rel).read_bytes()

    unchanged = sync.pull(runner, str(remote.root), local)
    assert (unchanged.files_sent, unchanged.bytes_sent) == (0, 0) and unchanged.bytes_in < 64

    new = "".join(json.dumps({"step": s, "loss": 1 / (s + 1)}) + "\n" for s in range(100, 110)).encode()
    with open(remote.metrics, "ab") as f:
        f.write(new)
    grown = sync.pull(runner, str(remote.root), local)
    assert (grown.files_sent, grown.files_appended, grown.bytes_sent) == (1, 1, len(new))
    assert grown.bytes_in <= len(new) + 200  # the new bytes (compressed) and a small frame overhead
    assert (local / "metrics.jsonl").read_bytes() == remote.metrics.read_bytes()

    # A rewritten log (truncated and written again, here longer than before) comes whole.
    log = remote.batch_log("out", "7")
    log.write_text("a requeued attempt wrote this\n" * 30)
    rewritten = sync.pull(runner, str(remote.root), local)
    assert (rewritten.files_sent, rewritten.files_appended, rewritten.bytes_sent) == (1, 0, log.stat().st_size)
    assert (local / "logs" / "7.out").read_bytes() == log.read_bytes()
    remote.summary_file.write_text(json.dumps({"steps": 100, "loss": 0.5}))  # not append-only: whole
    assert sync.pull(runner, str(remote.root), local).bytes_sent == remote.summary_file.stat().st_size
    assert sync.pull(runner, str(remote.root), local).bytes_sent == 0


def test_observable_paths_use_rundir_names_and_never_checkpoints():
    paths = sync.observable_paths()
    assert "metrics.jsonl" in paths and "logs" in paths and "submitit/*/*_*_log.out" in paths
    assert "manifests" in paths  # every attempt's manifest and code patch
    assert not any("checkpoint" in p or p.endswith(".pkl") for p in paths)


# ----- property: any edits, then a push, leave the remote equal to the local tree ----------
NAMES = ["a", "b", "a/b", "a/c", "b/a/c", "c.sh"]
edits = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NAMES), st.binary(max_size=64), st.sampled_from([0o644, 0o755, 0o600])),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("link"), st.sampled_from(NAMES), st.sampled_from(["c.sh", "../x", "a/b"])),
), max_size=8)


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _make_parents(root: Path, rel: str) -> None:
    for parent in reversed(Path(rel).parents[:-1]):
        if (root / parent).is_symlink() or (root / parent).is_file():
            (root / parent).unlink()
    (root / rel).parent.mkdir(parents=True, exist_ok=True)


def apply(root: Path, edit) -> None:
    kind, rel = edit[0], edit[1]
    if kind == "delete":
        if (root / rel).is_symlink() or (root / rel).is_file():
            (root / rel).unlink()
        return
    _make_parents(root, rel)
    _clear(root / rel)
    if kind == "write":
        (root / rel).write_bytes(edit[2])
        (root / rel).chmod(edit[3])
    else:
        (root / rel).symlink_to(edit[2])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=edits, after=edits)
def test_any_edits_then_a_push_leave_the_remote_equal(before, after):
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        src.mkdir()
        for edit in before:
            apply(src, edit)
        runner = sync.LocalRunner()
        sync.push(runner, src, str(dst))
        assert tree(dst) == tree(src)
        for edit in after:
            apply(src, edit)
        sync.push(runner, src, str(dst))
        assert tree(dst) == tree(src)
        assert sync.push(runner, src, str(dst)).round_trips == 1


def test_the_login_node_side_imports_the_standard_library_only():
    code = ("import sys, hpcorch.remote.files; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hpcorch', 'torch', 'paramiko', 'submitit', 'yaml', 'psutil')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['hpcorch', 'hpcorch.remote', 'hpcorch.remote.files']"


def test_a_remote_keeping_whole_seconds_still_costs_one_round_trip(tmp_path, runner):
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, 3)
    sync.push(runner, src, str(dst))
    for path in dst.rglob("*.py"):  # what a file system with 1 s timestamps keeps of ours
        ns = path.stat().st_mtime_ns
        os.utime(path, ns=(ns - ns % 10**9, ns - ns % 10**9))
    stats = sync.push(runner, src, str(dst))
    assert (stats.round_trips, stats.files_sent) == (1, 0)


def test_an_answer_that_is_not_ours_and_a_missing_local_tree_are_one_line_errors(tmp_path):
    make_tree(tmp_path / "src", 1)
    with pytest.raises(RemoteError, match="unexpected answer from hpcorch.remote.files"):
        sync.push(sync.LocalRunner(python="echo"), tmp_path / "src", str(tmp_path / "dst"))
    with pytest.raises(RemoteError, match="unexpected answer"):
        sync.pull(sync.LocalRunner(python="echo"), str(tmp_path / "dst"), tmp_path / "local")
    with pytest.raises(HpcorchError, match="not a directory"):
        sync.push(sync.LocalRunner(), tmp_path / "typo", str(tmp_path / "src"))
    assert (tmp_path / "src" / "pkg0" / "mod0.py").exists()
