"""Helpers for tests on the dev cluster: scripts, job tracking, output files."""
from __future__ import annotations

import time
from pathlib import Path


def script(body: str, *directives: str) -> str:
    lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in directives] + [body.strip(), ""]
    return "\n".join(lines)


def wait_for_file(path: Path, predicate=lambda text: bool(text), timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
            if predicate(text):
                return text
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{path} did not appear as expected in {timeout_s:.0f} s")


class Jobs:
    """Submits through a Slurm handle and cancels whatever is left at teardown."""

    def __init__(self, slurm):
        self.slurm, self.ids = slurm, []

    def submit(self, text: str, *options: str) -> str:
        job_id = self.slurm.sbatch(text, *options)
        self.ids.append(job_id)
        return job_id

    def cleanup(self) -> None:
        from hpcorch.cluster.slurm import FINAL_STATES

        for job_id in self.ids:
            if self.slurm.state(job_id) not in FINAL_STATES | {"UNKNOWN"}:
                self.slurm.cancel(job_id)


def wait_progress(run_dir: Path, step: int, timeout_s: float = 120.0) -> int:
    """Wait until the run's rank 0 reports at least ``step``; returns the step seen."""
    import json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen = json.loads((run_dir / "progress.json").read_text())["step"]
            if seen >= step:
                return seen
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{run_dir} did not reach step {step} in {timeout_s:.0f} s")
