"""The token cache (~/.cache/hpcorch/tokens) stays bounded: unused and least recently used
token files are pruned, never one a live process has mapped, and a write or a prune cut short
never leaves an entry that looks complete."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from hpcorch.train import tokencache
from hpcorch.train.tokencache import TokenCache

pytestmark = pytest.mark.timeout(120)
DAY = 86400


def _entry(cache: TokenCache, key: str, size: int, used_days_ago: float) -> None:
    """A token file of ``size`` bytes written by another process (nobody holds it), last used
    ``used_days_ago``."""
    path = cache.path(key)
    cache._write(path, np.full(size, 7, dtype=np.uint8))
    when = time.time() - used_days_ago * DAY
    os.utime(path, (when, when))


def _keys(cache: TokenCache) -> set[str]:
    return {p.name[len("tokens-"):-len(".u8")] for p in cache.folder.glob("tokens-*.u8")}


def test_prune_drops_the_unused_then_the_least_recently_used_beyond_the_size(tmp_path):
    cache = TokenCache(tmp_path)
    for key, days in (("old", 40), ("a", 3), ("b", 2), ("c", 1)):
        _entry(cache, key, 1000, days)
    removed = cache.prune(max_bytes=2500, max_age_s=30 * DAY)
    assert [p.name for p in removed] == ["tokens-old.u8", "tokens-a.u8"]
    assert _keys(cache) == {"b", "c"}
    assert not (tmp_path / "tokens-old.json").exists() and (tmp_path / "tokens-b.json").exists()
    assert cache.prune(max_bytes=2500, max_age_s=30 * DAY) == []


def test_a_use_marks_the_file_used_and_a_write_prunes_the_folder(tmp_path, monkeypatch):
    cache = TokenCache(tmp_path)
    _entry(cache, "stale", 1000, 40)
    _entry(cache, "kept", 1000, 40)
    got = cache.tokens("kept", lambda: pytest.fail("a complete entry is not built again"))
    assert len(got) == 1000 and time.time() - cache.path("kept").stat().st_mtime < 60
    monkeypatch.setattr(tokencache, "MAX_BYTES", 10**9)
    cache.tokens("new", lambda: np.arange(10, dtype=np.uint8))
    assert _keys(cache) == {"kept", "new"}  # the write pruned "stale"; "kept" was used just now


def test_a_file_system_without_flock_still_serves_tokens_and_prunes_nothing(tmp_path, monkeypatch):
    """Lustre mounted noflock answers flock with ENOSYS, NFS without its lock daemon with ENOLCK:
    a rank must still train, and a prune that cannot lock must not remove anything."""
    import errno

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    cache = TokenCache(tmp_path)
    _entry(cache, "stale", 1000, 40)
    monkeypatch.setattr(tokencache.fcntl, "flock", no_flock)
    monkeypatch.setattr(tokencache, "_held", {})
    assert len(cache.tokens("new", lambda: np.arange(10, dtype=np.uint8))) == 10
    assert cache.prune(max_bytes=0, max_age_s=0) == [] and _keys(cache) == {"stale", "new"}


HOLDER = """
import sys, time
import numpy as np
from hpcorch.train.tokencache import TokenCache
tokens = TokenCache(sys.argv[1]).tokens("busy", lambda: np.arange(100, dtype=np.uint8))
print(int(tokens.sum()), flush=True)
time.sleep(120)
"""


def test_a_file_a_live_process_maps_is_never_pruned(tmp_path):
    """A real second process maps the entry (as a rank does); a prune that would drop
    everything keeps it while that process lives, and drops it once it is gone."""
    cache = TokenCache(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == str(sum(range(100)))
        old = time.time() - 90 * DAY
        os.utime(cache.path("busy"), (old, old))
        _entry(cache, "idle", 100, 90)
        assert [p.name for p in cache.prune(max_bytes=0, max_age_s=0)] == ["tokens-idle.u8"]
        assert _keys(cache) == {"busy"} and cache._complete(cache.path("busy"))
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert [p.name for p in cache.prune(max_bytes=0, max_age_s=0)] == ["tokens-busy.u8"]
    assert list(tmp_path.iterdir()) == []


def test_a_write_or_a_prune_cut_short_never_leaves_an_entry_that_looks_complete(tmp_path):
    cache = TokenCache(tmp_path)
    _entry(cache, "cut", 50, 1)
    cache.path("cut").unlink()  # a prune that died between its two unlinks: the side file alone
    built = []
    got = cache.tokens("cut", lambda: built.append(1) or np.arange(50, dtype=np.uint8))
    assert built == [1] and np.array_equal(got, np.arange(50, dtype=np.uint8))
    # A writer that died mid-write leaves only its temporary file: no entry, and it is rebuilt.
    dead = tmp_path / ".tokens-dead.u8.x1y2.tmp"
    dead.write_bytes(b"\x01" * 10)
    young = tmp_path / ".tokens-busy.u8.z3w4.tmp"
    young.write_bytes(b"\x01" * 10)
    old = time.time() - 2 * 3600
    os.utime(dead, (old, old))
    assert not cache._complete(cache.path("dead"))
    cache.prune()
    assert not dead.exists() and young.exists()  # a young one may still be being written
