"""A wheel, installed non-editable into a fresh virtual environment, works outside the source
tree: the shipped profiles, jobs and templates are inside the package."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(*args, cwd, env=None, timeout=300):
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this tree, installed without -e into a new venv (its dependencies
    come from this interpreter's site-packages: no download)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A clean copy of the tree: a stale build/ folder would hide files the wheel lacks.
    source = tmp / "source"
    shutil.copytree(REPO, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "runs", "__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", source,
        cwd=tmp)
    wheel = next((tmp / "dist").glob("hpcorch-*.whl"))
    run(sys.executable, "-m", "venv", "--system-site-packages", tmp / "venv", cwd=tmp)
    python = tmp / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp)
    where = run(python, "-c", "import hpcorch; print(hpcorch.__file__)", cwd=tmp).stdout.strip()
    assert where.startswith(str(tmp / "venv")), where  # the wheel's copy, not this checkout
    return tmp


def test_every_shipped_job_dry_runs_on_every_profile_it_fits(installed):
    hpcorch = installed / "venv" / "bin" / "hpcorch"
    away = installed / "elsewhere"
    away.mkdir()
    env = {"HPCORCH_HOME": str(installed / "home")}
    profiles = [row["name"] for row in json.loads(run(hpcorch, "profile", "list", "--json", cwd=away, env=env).stdout)]
    assert {"local", "devcluster", "h100-ndr", "a100-hdr"} <= set(profiles)
    jobs = [line.split()[0] for line in run(hpcorch, "jobs", "list", cwd=away, env=env).stdout.splitlines()[1:]]
    assert {"gpt-tiny", "gpt2-124m", "gpt-1.3b"} <= set(jobs)
    fits = 0
    for job in jobs:
        for profile in profiles:
            plan = subprocess.run([hpcorch, "plan", job, "-p", profile], cwd=away, capture_output=True, text=True,
                                  timeout=60, env={**os.environ, **env})
            assert plan.returncode in (0, 2) and "Traceback" not in plan.stderr, plan.stderr
            if plan.returncode:
                continue  # does not fit this profile: a one-line reason
            script = run(hpcorch, "submit", job, "-p", profile, "--dry-run", cwd=away, env=env).stdout
            assert script.startswith("#!/bin/bash") and f"--job-name={job}" in script
            fits += 1
    assert fits >= 5  # tiny on local and devcluster, 124m on both GPU clusters, 1.3b on h100-ndr
