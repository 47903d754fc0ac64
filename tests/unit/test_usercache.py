"""The per-user cache of parsed profile and job files is only a shortcut: the same data as a
parse, whatever state its folder is in, and errors are never kept."""
import marshal

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
