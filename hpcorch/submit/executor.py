"""Submit a plan: submitit pickles the training task and runs it on every rank; the sbatch
script it sends is the one our template renders (byte for byte what ``--dry-run`` prints)."""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import HpcorchError
from ..plan import Plan
from ..registry import Entry, Registry
from ..run import write_resolved_job
from .task import TrainTask


class SubmitError(HpcorchError):
    pass


def _executor_class():
    """A SlurmExecutor whose submission file is our rendered script (imported lazily: submitit
    is not needed for dry runs)."""
    import submitit

    class TemplateSlurmExecutor(submitit.SlurmExecutor):
        def __init__(self, plan: Plan, script: str):
            super().__init__(folder=plan.submitit_folder, python=shlex.quote(plan.python),
                             max_num_timeout=plan.job.requeue.max_timeouts)
            self.plan, self.script = plan, script
            res = plan.job.resources
            self.update_parameters(nodes=res.nodes, ntasks_per_node=res.tasks_per_node,
                                   time=plan.time_minutes)

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            if command != self.plan.submitit_command:  # the template and submitit must agree
                raise SubmitError(f"submitit's command {command!r} differs from the rendered one "
                                  f"{self.plan.submitit_command!r}")
            return self.script

    return TemplateSlurmExecutor


@dataclass
class Submission:
    entry: Entry
    job: object  # submitit.Job

    def describe(self) -> str:
        e = self.entry
        return f"submitted job {e.job_id} (hpcorch #{e.key}, {e.name}) on {e.profile}; run dir {e.run_dir}"


def submit_plan(plan: Plan, script: str, profile_ref: str, registry: Registry | None = None,
                resumed_from: int | None = None) -> Submission:
    """Write the run directory, submit through submitit, and record the job."""
    run_dir = plan.run_dir
    job_file = write_resolved_job(plan.job, run_dir)
    (run_dir / "logs").mkdir(exist_ok=True)
    task = TrainTask(str(job_file), str(run_dir), plan.profile.scheduler, _peak_tflops(plan))
    if plan.profile.scheduler == "slurm":
        job = _executor_class()(plan, script).submit(task)
    else:
        # The local controller outlives this command: give it a log file, not our terminal
        # (a caller reading our output would otherwise wait for the whole run).
        with _stdio_to(run_dir / "logs" / "controller.log"):
            job = _local_executor(plan).submit(task)
    entry = (registry or Registry()).add(
        job.job_id, plan.job.name, profile_ref, plan.profile.scheduler, str(run_dir), str(job_file),
        slurm_conf=os.environ.get("SLURM_CONF"), exclude=plan.job.resources.exclude,
        resumed_from=resumed_from)
    return Submission(entry, job)


@contextlib.contextmanager
def _stdio_to(path: Path):
    """Point file descriptors 1 and 2 at ``path`` while children are started."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _local_executor(plan: Plan):
    import submitit

    res = plan.job.resources
    executor = submitit.LocalExecutor(folder=plan.submitit_folder)
    setup = [f"export {k}={shlex.quote(v)}" for k, v in plan.environment.items()]
    executor.update_parameters(tasks_per_node=res.world_size, nodes=1, timeout_min=plan.time_minutes,
                               signal_delay_s=plan.job.requeue.signal_lead_s,
                               gpus_per_node=res.gpus_per_node, **({"setup": setup} if setup else {}))
    return executor


def _peak_tflops(plan: Plan) -> float | None:
    gpus = plan.profile.node_types[plan.partition.node_type].gpus
    return gpus.peak_tflops if plan.job.resources.gpus_per_node and gpus.peak_tflops else None


def rank_log(entry: Entry, rank: int = 0, stream: str = "out") -> Path:
    return Path(entry.run_dir) / "submitit" / entry.job_id / f"{entry.job_id}_{rank}_log.{stream}"


def follow(path: Path, done, write, poll_s: float = 0.5) -> None:
    """Pass ``path``'s text to ``write`` as it grows, until ``done()`` and the end is read."""
    offset = 0
    while True:
        finished = done()
        try:
            with open(path, errors="replace") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
        except OSError:
            chunk = ""
        if chunk:
            write(chunk)
        if finished:
            return
        time.sleep(poll_s)
