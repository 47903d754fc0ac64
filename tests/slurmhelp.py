"""Helpers for tests on the dev cluster: scripts, job tracking, output files."""
from __future__ import annotations

from pathlib import Path

from hpcorch.cluster.slurm import Slurm
from hpcorch.util.poll import poll_until


class TestSlurm(Slurm):
    """Slurm's commands plus the operations only tests perform (an operator's, not a user's)."""

    __test__ = False  # not a pytest class

    def sbatch(self, script: str, *options: str) -> str:
        """Submit a script given as text; returns the job id."""
        out = self.run("sbatch", "--parsable", *options, input=script)
        return out.strip().split(";")[0]

    def update_job(self, job_id: str, **fields: str) -> None:
        self.run("scontrol", "update", f"JobId={job_id}", *(f"{k}={v}" for k, v in fields.items()))

    def wait_for(self, job_id: str, states: set[str] | str, timeout_s: float = 120.0,
                 poll_s: float = 0.5) -> str:
        """Wait until the job is in one of ``states``; fail with its history on timeout."""
        wanted = {states} if isinstance(states, str) else set(states)
        seen: list[str] = []

        def reached():
            state = self.state(job_id)
            if not seen or seen[-1] != state:
                seen.append(state)
            return state if state in wanted else None

        try:
            return poll_until(reached, timeout_s, interval_s=poll_s)
        except TimeoutError:
            raise AssertionError(f"job {job_id} did not reach {sorted(wanted)} in {timeout_s:.0f} s "
                                 f"(states seen: {' -> '.join(seen)})") from None

    def start_now(self, job_id: str, check: bool = False) -> None:
        """A requeued job waits ~120 s (BeginTime); let it start almost at once. Not within
        the second its old credential was revoked: slurmd would refuse the new one and the
        job would fail ("Job credential revoked"; see hpcorch.batch.recovery.start_when_pending)."""
        import time

        time.sleep(2.0)
        # unchecked by default: hpcorch.batch.recovery's own helper may have started it meanwhile.
        super().start_now(job_id, check=check)

    def set_node(self, node: str, state: str, reason: str = "hpcorch") -> None:
        args = ["scontrol", "update", f"NodeName={node}", f"State={state}"]
        if state.upper() in ("DOWN", "DRAIN"):
            args.append(f"Reason={reason}")
        self.run(*args)

    def node_state(self, node: str) -> str:
        out = self.run("sinfo", "-h", "-N", "-n", node, "-o", "%T")
        return out.split()[0] if out.split() else "UNKNOWN"

    def wait_for_accounting(self, job_id: str, state: str, timeout_s: float = 60.0) -> str:
        """Wait until sacct (slurmdbd, which lags the controller) reports ``state``."""
        got = {}

        def reached():
            got["state"] = self.sacct_states([job_id]).get(job_id, "UNKNOWN")
            return got["state"] == state

        try:
            poll_until(reached, timeout_s, interval_s=0.5)
        except TimeoutError:
            pass
        return got["state"]


def script(body: str, *directives: str) -> str:
    lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in directives] + [body.strip(), ""]
    return "\n".join(lines)


def wait_for_file(path: Path, predicate=lambda text: bool(text), timeout_s: float = 60.0) -> str:
    def text():
        try:
            content = path.read_text()
        except OSError:
            return None
        return content if predicate(content) else None

    try:
        return poll_until(text, timeout_s, interval_s=0.2)
    except TimeoutError:
        raise AssertionError(f"{path} did not appear as expected in {timeout_s:.0f} s") from None


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
            if self.slurm.state(job_id) not in FINAL_STATES:
                self.slurm.cancel(job_id)


def wait_progress(run_dir: Path, step: int, timeout_s: float = 120.0) -> int:
    """Wait until the run's rank 0 reports at least ``step``; returns the step seen."""
    from hpcorch.state.rundir import RunDir

    run = RunDir(run_dir)

    def reached():
        seen = run.progress().get("step")
        return seen if seen is not None and seen >= step else None

    try:
        return poll_until(reached, timeout_s, interval_s=0.1)
    except TimeoutError:
        raise AssertionError(f"{run_dir} did not reach step {step} in {timeout_s:.0f} s") from None
