"""Shared fixtures. Slurm-dependent fixtures live in tests/slurm_fixtures.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = [p for p in ("slurm_fixtures", "ssh_fixtures") if (Path(__file__).parent / f"{p}.py").exists()]


@pytest.fixture
def repo() -> Path:
    return REPO


def run_cli(*args, cwd=None, env=None, timeout=120):
    """Run the real ``hpcorch`` console entry point as a separate process."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "hpcorch.cli", *map(str, args)], cwd=cwd or REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
