"""A full disk during a checkpoint save, for real: the run directory on a small tmpfs (root only)."""
import os
import re

import pytest
from conftest import mounted_tmpfs
from trainhelp import summary, train

pytestmark = pytest.mark.timeout(120)

SIX = ("trainer.steps=6", "trainer.checkpoint.interval=3")


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs of this test's own, unmounted afterwards whatever happens."""
    with mounted_tmpfs(tmp_path / "fs", "4m") as mnt:
        yield mnt


def _fill(mnt, leave: int):
    """A file that leaves about ``leave`` bytes free on ``mnt``."""
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    filler.write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - leave)))
    return filler


def test_full_disk_during_a_save_is_one_line_and_the_resume_is_exact(small_fs, tmp_path):
    ref = tmp_path / "ref"
    assert train(ref, 2, *SIX).returncode == 0  # uninterrupted, on the ordinary disk
    size = sum(p.stat().st_size for p in (ref / "checkpoints" / "step_000000003").iterdir())
    run = small_fs / "run"
    filler = _fill(small_fs, leave=size * 3 // 2 + 64 * 1024)  # step 3's checkpoint fits, step 6's does not

    full = train(run, 2, *SIX)
    assert full.returncode == 2, full.stdout + full.stderr
    assert "Traceback" not in full.stdout + full.stderr
    pattern = (rf"error: checkpoint save to {run}/checkpoints/step_000000006 failed: no space left on device "
               rf"on {small_fs} \(tmpfs\): needs ~[\d.]+ kB, [\d.]+ kB free")
    assert re.fullmatch(pattern, full.stderr.strip()), full.stdout + "\n---\n" + full.stderr
    assert not [p for p in small_fs.rglob("*") if p.name.endswith(".tmp")]
    assert not list((run / "checkpoints").glob("step_000000006/*"))  # nothing of the failed save stays

    from hpcorch.train.checkpoint.store import CheckpointStore

    _, _, record = CheckpointStore(run / "checkpoints", rank=0, world_size=2).load(3)  # digests verified
    assert record["step"] == 3

    filler.unlink()
    resumed = train(run, 2, *SIX)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed at step 3" in resumed.stdout
    assert summary(run)["weights_sha256"] == summary(ref)["weights_sha256"]


@pytest.mark.parametrize("leave_pages", [0, 2, 4])
def test_a_full_disk_before_training_is_one_line(small_fs, leave_pages):
    """No room for the lease and job file (0 pages: the CLI's error), for rank 0's progress and
    metrics (2: warnings, then the save stops both ranks), or for either rank's checkpoint part
    (4: both fail the save and leave together): an `error:` line naming the file system, exit 2
    (not gloo's 134 abort), no traceback from any rank."""
    run = small_fs / "run"
    _fill(small_fs, leave=leave_pages * 4096)
    out = train(run, 2, "trainer.steps=4")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors and all(re.fullmatch(rf"error: (checkpoint save to |writing ){run}\S* failed: no space left "
                                       rf"on device on {small_fs} \(tmpfs\): .*", line) for line in errors), out.stderr
    assert not [p for p in small_fs.rglob("*") if p.name.endswith(".tmp")]
