"""Talking to Slurm through its own commands: submit, query, wait, update.

Every call has a timeout and raises :class:`SlurmError` with Slurm's own message.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from ..errors import HpcorchError
from ..poll import PollTimeout, poll_until

# States after which a job runs no more (unless requeued by hand).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class SlurmError(HpcorchError):
    pass


@dataclass
class Slurm:
    """Slurm's commands with one environment (``SLURM_CONF`` picks the cluster)."""

    env: dict | None = None
    timeout_s: float = 60.0

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        env = {**os.environ, **(self.env or {})}
        try:
            proc = subprocess.run(list(args), input=input, env=env, capture_output=True, text=True,
                                  timeout=self.timeout_s)
        except FileNotFoundError:
            raise SlurmError(f"{args[0]}: not found; is Slurm installed and on PATH?") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{' '.join(args)}: no answer in {self.timeout_s:.0f} s") from None
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def sbatch(self, script: str, *options: str) -> str:
        """Submit a script given as text; returns the job id."""
        out = self.run("sbatch", "--parsable", *options, input=script)
        return out.strip().split(";")[0]

    def test_only(self, script: str, *options: str) -> str:
        """``sbatch --test-only``: validate against the running cluster without submitting.
        Returns Slurm's message (on stderr, even on success)."""
        env = {**os.environ, **(self.env or {})}
        proc = subprocess.run(["sbatch", "--test-only", *options], input=script, env=env,
                              capture_output=True, text=True, timeout=self.timeout_s)
        if proc.returncode != 0:
            raise SlurmError(f"sbatch --test-only rejected the script: {proc.stderr.strip()}")
        return proc.stderr.strip()

    def show(self, kind: str, name: str) -> dict[str, str]:
        """``scontrol show KIND NAME`` as a dict (empty if Slurm does not know it)."""
        out = self.run("scontrol", "show", kind, "--oneliner", name, check=False)
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (empty once Slurm has forgotten the job)."""
        return self.show("job", job_id)

    def state(self, job_id: str) -> str:
        """The job's state: scontrol while the controller knows it, else sacct."""
        state = self.job(job_id).get("JobState")
        if state:
            return state
        return self.sacct_states([job_id]).get(job_id, "UNKNOWN")

    def sacct_states(self, job_ids: list[str]) -> dict[str, str]:
        """States of many jobs in one sacct call (allocations only, not steps)."""
        if not job_ids:
            return {}
        out = self.run("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids))
        states = {}
        for line in out.splitlines():
            job_id, _, state = line.partition("|")
            states[job_id] = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        return states

    def wait_for(self, job_id: str, states: set[str] | str, timeout_s: float = 120.0,
                 poll_s: float = 0.5) -> str:
        """Wait until the job is in one of ``states``; raise with its history on timeout."""
        wanted = {states} if isinstance(states, str) else set(states)
        seen: list[str] = []

        def reached() -> str | None:
            state = self.state(job_id)
            if not seen or seen[-1] != state:
                seen.append(state)
            return state if state in wanted else None

        try:
            return poll_until(reached, timeout_s, interval_s=poll_s)
        except PollTimeout:
            raise SlurmError(f"job {job_id} did not reach {sorted(wanted)} in {timeout_s:.0f} s "
                             f"(states seen: {' -> '.join(seen)})") from None

    def update_job(self, job_id: str, **fields: str) -> None:
        self.run("scontrol", "update", f"JobId={job_id}", *(f"{k}={v}" for k, v in fields.items()))

    def node_flags(self, node: str) -> set[str]:
        """Every word of the node's state as the controller holds it (``DOWN+COMPLETING`` ->
        {"DOWN", "COMPLETING"}); sinfo shows only one of them."""
        state = self.show("node", node).get("State", "")
        return set(state.rstrip("*~#$@").replace("*", "").split("+")) if state else set()

    def cancel(self, job_id: str, signal: str | None = None, batch_only: bool = False) -> None:
        args = ["scancel"]
        if signal:
            args.append(f"--signal={signal}")
        if batch_only:
            args.append("--batch")
        self.run(*args, job_id)
