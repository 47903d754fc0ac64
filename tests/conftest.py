"""Shared fixtures. Slurm-dependent fixtures live in tests/slurm_fixtures.py."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INTEGRATION = Path(__file__).resolve().parent / "integration"
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = [p for p in ("slurm_fixtures", "ssh_fixtures") if (Path(__file__).parent / f"{p}.py").exists()]

# The session's token cache (hpcorch.train.tokencache): its own, not the user's ~/.cache, and
# shared by every run the tests start (as one user's runs share theirs).
if "HPCORCH_CACHE" not in os.environ:
    os.environ["HPCORCH_CACHE"] = tempfile.mkdtemp(prefix="hpcorch-tokens-")
    atexit.register(shutil.rmtree, os.environ["HPCORCH_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration starts processes (trainers, submitit, sshd, the dev
    cluster): marked slow, so ``-m "not slurm and not slow"`` is the unit tests alone."""
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def fake_slurm(tmp_path):
    """Slurm's commands faked on a PATH of their own (:class:`fake_slurm.FakeSlurm`): set jobs,
    nodes and recorded answers per test, read back every command line hpcorch ran. Put
    ``fake_slurm.path`` on PATH (monkeypatch) or pass ``fake_slurm.env`` to a subprocess."""
    from fake_slurm import FakeSlurm

    return FakeSlurm(tmp_path)


def run_cli(*args, cwd=None, env=None, timeout=120):
    """Run the real ``hpcorch`` console entry point as a separate process."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "hpcorch.cli.main", *map(str, args)], cwd=cwd or REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def mounted_tmpfs(where: Path, size: str):
    """A tmpfs of ``size`` (``4m``, ``256k``) mounted at ``where`` (created) for a test of a
    full disk, unmounted afterwards whatever happens; skips the test without root or mount."""
    import contextlib
    import subprocess

    @contextlib.contextmanager
    def mount():
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        try:
            yield where
        finally:
            if subprocess.run(["umount", str(where)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(where)], check=False)  # busy: detach it anyway

    return mount()
