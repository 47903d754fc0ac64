"""A full disk during a checkpoint save, for real: the run directory on a small tmpfs (root only)."""
import os
import re
import subprocess

import pytest

from trainhelp import summary, train

pytestmark = pytest.mark.timeout(120)

SIX = ("trainer.steps=6", "trainer.checkpoint.interval=3")


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs of this test's own, unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False)  # busy: detach it anyway


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
    assert re.fullmatch(pattern, full.stderr.strip()), full.stderr
    assert not [p for p in small_fs.rglob("*") if p.name.endswith(".tmp")]
    assert not list((run / "checkpoints").glob("step_000000006/*"))  # nothing of the failed save stays

    from hpcorch.train.store import CheckpointStore

    _, _, record = CheckpointStore(run / "checkpoints", rank=0, world_size=2).load(3)  # digests verified
    assert record["step"] == 3

    filler.unlink()
    resumed = train(run, 2, *SIX)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed at step 3" in resumed.stdout
    assert summary(run)["weights_sha256"] == summary(ref)["weights_sha256"]
