"""The per-user cache of parsed profile and job files is only a shortcut: the same data as a
parse, whatever state its folder is in, and errors are never kept."""
import hashlib
import marshal
import os
import threading
import time

import pytest

from hpcorch.errors import ConfigError
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.spec.yamlio import read_yaml


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "hpcorch"


def entries(cache):
    return sorted(cache.glob("yaml-*/*"))


def test_parsed_files_come_back_equal_and_fresh(repo, cache):
    job = load_job(repo / "jobs/gpt-tiny.yaml")
    profile = load_profile("devcluster")
    assert len(entries(cache)) == 2, "each file's first read fills the cache"
    assert load_job(repo / "jobs/gpt-tiny.yaml") == job and load_profile("devcluster") == profile
    first = read_yaml(repo / "jobs/gpt-tiny.yaml")
    first["name"] = "changed"  # callers change what they get (--set): the next read is unchanged
    assert read_yaml(repo / "jobs/gpt-tiny.yaml")["name"] == "gpt-tiny"


def test_damaged_or_foreign_entries_are_misses(repo, cache, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("a: &x [1, 2.5, null, true]\nb: *x\nc: {d: '3e-4', e: 2:00:00}\n")
    want = read_yaml(path)
    assert want["a"] is want["b"]  # an alias is one object, from the cache too
    for damage in (b"", b"garbage", entries(cache)[0].read_bytes()[:20],
                   marshal.dumps(("other text", {"a": 1}))):  # a key whose hash collides
        for entry in entries(cache):
            entry.write_bytes(damage)
        got = read_yaml(path)
        assert got == want and got["a"] is got["b"]
    path.write_text("a: 2\n")  # an edited file is parsed anew
    assert read_yaml(path) == {"a": 2}


def test_errors_are_not_kept_and_unwritable_cache_is_no_error(repo, tmp_path, monkeypatch, cache):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\na: 2\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="duplicate key 'a'"):
            read_yaml(path)
    assert not entries(cache)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # the folder cannot be made
    assert load_profile("devcluster") == load_profile(repo / "cluster_profiles/devcluster.yaml")


def test_edited_texts_do_not_grow_the_cache_without_bound(tmp_path, monkeypatch, cache):
    from hpcorch.spec import usercache

    monkeypatch.setattr(usercache, "PRUNE_EVERY", 1)  # prune on every write: deterministic
    monkeypatch.setattr(usercache, "MAX_ENTRIES", 5)
    path = tmp_path / "job.yaml"
    start = time.time() - 1000
    for i in range(12):  # a file edited 12 times: one entry per text
        text = f"a: {i}\n"
        path.write_text(text)
        assert read_yaml(path) == {"a": i}
        # a distinct mtime per edit: a coarse clock must not make the order a tie
        (entry,) = cache.glob("yaml-*/" + hashlib.sha256(text.encode()).hexdigest())
        os.utime(entry, (start + i, start + i))
    kept = entries(cache)
    assert len(kept) == 5
    # the newest texts are those kept: reading the last edit again is a hit, not a reparse
    assert {marshal.loads(e.read_bytes())[0] for e in kept} == {f"a: {i}\n" for i in range(7, 12)}


def test_prune_removes_old_entries_stale_temporaries_and_old_versions(tmp_path):
    from hpcorch.spec.usercache import prune

    root = tmp_path / "hpcorch"
    current, old_version, other = root / "yaml-new", root / "yaml-old", root / "templates-x"
    for folder in (current, old_version, other):
        folder.mkdir(parents=True)
    now = time.time()

    def made(path, age_s):
        path.write_bytes(b"x")
        os.utime(path, (now - age_s, now - age_s))
        return path

    fresh = [made(current / f"e{i}", i) for i in range(3)]
    stale = made(current / "old", 31 * 86400)
    dead_tmp = made(current / ".e9.abc.tmp", 2 * 3600)
    live_tmp = made(current / ".e8.abc.tmp", 10)  # another process is writing it now
    made(old_version / "e", 40 * 86400)
    os.utime(old_version, (now - 40 * 86400, now - 40 * 86400))
    made(other / "e", 40 * 86400)
    os.utime(other, (now - 40 * 86400, now - 40 * 86400))  # not a version of "yaml": kept
    prune(current, max_entries=2)
    assert sorted(current.iterdir()) == sorted([fresh[0], fresh[1], live_tmp])
    assert not stale.exists() and not dead_tmp.exists() and not old_version.exists()
    assert (other / "e").exists()
    prune(current / "gone")  # a folder removed meanwhile (another process): no error
    prune(current, max_entries=0)
    assert list(current.iterdir()) == [live_tmp]


def test_processes_pruning_at_once_do_not_fail(tmp_path):
    from hpcorch.spec.usercache import prune

    folder = tmp_path / "yaml-v"
    folder.mkdir()
    for i in range(1500):
        (folder / f"e{i}").write_bytes(b"x")
    barrier, failed = threading.Barrier(4), []

    def run():
        barrier.wait()
        try:
            prune(folder, max_entries=10)
        except BaseException as exc:  # noqa: BLE001 - any escape is the failure tested for
            failed.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failed and len(list(folder.iterdir())) == 10
