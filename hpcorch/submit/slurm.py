"""The Slurm backend: jobs submitted with sbatch (through submitit, our rendered script) and
asked after with squeue/sacct/scontrol, every command line written in
:class:`hpcorch.cluster.slurm.Slurm`. A job's cluster is its ``SLURM_CONF`` (``entry.env``)."""
from __future__ import annotations

import os

from hpcorch.cluster.slurm import Slurm, SlurmError
from hpcorch.state import jobstate
from hpcorch.state.registry import Entry
from hpcorch.submit.backend import Backend
from hpcorch.util.poll import Backoff


class SlurmBackend(Backend):
    kind = "slurm"
    has_nodes = True

    def check(self, profile: str, script: str) -> str:
        """``sbatch --test-only``: Slurm's answer (when and where it would start), or its refusal."""
        return Slurm().test_only(script)

    def submit(self, plan, script: str):
        from hpcorch.submit.executor import start, submit_slurm

        return start(plan, script, submit_slurm)

    def states(self, entries: list[Entry]) -> dict[int, str]:
        """Batched per cluster: one squeue call, one sacct call for what the controller forgot
        (see :func:`hpcorch.state.jobstate.slurm_states`); a job no one knows is UNKNOWN."""
        found = jobstate.slurm_states(entries)
        for e in entries:  # the state stays what Slurm said: the job starts at its next scheduling
            if found.get(e.job_id) == "PENDING (BeginTime)":
                _lift_hold(e)
        return {e.key: found.get(e.job_id, "UNKNOWN") for e in entries}

    def accounting(self, entries: list[Entry]) -> dict[str, list[dict[str, str]]]:
        """Every run of each job (``sacct -D``), one call per cluster; a cluster without
        accounting (no slurmdbd) gives nothing, and its jobs' run directories answer."""
        rows: dict[str, list[dict[str, str]]] = {}
        for slurm, ids in jobstate.clusters(entries):
            try:
                rows.update(slurm.attempts(ids))
            except SlurmError:
                pass
        return rows

    def cancel(self, entry: Entry) -> str:
        """scancel, unless the job has ended already (scancel would accept a job the controller
        still holds, and say nothing)."""
        state = self.state(entry)
        if jobstate.has_ended(state):
            return f"job {entry.job_id} has ended ({state}); nothing to cancel"
        Slurm(env=entry.env).cancel(entry.job_id)
        return f"cancel sent to job {entry.job_id}"

    def backoff(self) -> Backoff:
        """Slurm is asked at most every 15 s after a short ramp (as submitit's watcher backs off)."""
        return Backoff(1.0, 2.0, 15.0)

    def failed_nodes(self, entry: Entry) -> list[str]:
        """Nodes that ran the job (any of its runs, requeues included) and that Slurm now reports
        down, drained or failing: a node that failed and was brought back is not excluded."""
        slurm = Slurm(env=entry.env)
        return sorted(h for h in slurm.nodes_used(entry.job_id) if slurm.node_unhealthy(h))

    def resume_overrides(self, entry: Entry, asked: set[str]) -> list[str]:
        """Exclude what the job excluded, the nodes that failed under it and ``asked``; and aim
        the resubmission at the job's cluster (submitit's sbatch reads ``SLURM_CONF`` from the
        environment)."""
        from hpcorch.spec.units import compress_hostlist, expand_hostlist

        excluded = set(expand_hostlist(entry.exclude)) if entry.exclude else set()
        excluded.update(self.failed_nodes(entry))
        excluded.update(asked)
        if entry.slurm_conf:
            os.environ["SLURM_CONF"] = entry.slurm_conf
        return [f"resources.exclude={compress_hostlist(sorted(excluded))}"] if excluded else []

    def time_left(self, entry: Entry) -> int | None:
        return Slurm(env=entry.env).time_left(entry.job_id)

    def requeue(self, entry: Entry, exclude: list[str] = ()) -> None:
        """Requeue in place without ``exclude``, and cut Slurm's hold on the requeued job (see
        :func:`hpcorch.batch.recovery.requeue_without`)."""
        from hpcorch.batch.recovery import requeue_without

        requeue_without(Slurm(env=entry.env), entry.job_id, list(exclude))


def _lift_hold(entry: Entry) -> bool:
    """Cut Slurm's hold on a job it requeued, which nothing inside the job could (see
    :func:`hpcorch.batch.recovery.lift_requeue_hold`), unless the job's own environment keeps
    it (``HPCORCH_REQUEUE_HOLD: keep``); never fails the command that looked."""
    from hpcorch.batch.recovery import HOLD_ENV, keeps_hold, lift_requeue_hold
    from hpcorch.errors import HpcorchError
    from hpcorch.spec.yamlio import parse_yaml
    from hpcorch.state.rundir import RunDir

    try:
        job = parse_yaml(RunDir(entry.run_dir).job_file.read_text(), entry.run_dir)
        if keeps_hold((job.get("environment") or {}).get(HOLD_ENV, "")):
            return False
    except (OSError, UnicodeDecodeError, HpcorchError, AttributeError):
        pass  # no readable job here (a remote run's folder): the environment of this command decides
    try:
        return lift_requeue_hold(Slurm(env=entry.env), entry.job_id)
    except (SlurmError, ValueError):
        return False
