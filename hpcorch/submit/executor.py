"""Hand a plan to submitit: it pickles the training task and runs it on every rank. On Slurm
the sbatch script it sends is the one our template renders (byte for byte what ``--dry-run``
prints); with the ``local`` profile submitit's local controller runs the ranks here."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from hpcorch.batch.manifest import record_submission
from hpcorch.batch.program import ProgramTask
from hpcorch.batch.task import TrainTask
from hpcorch.errors import HpcorchError
from hpcorch.plan.plan import Plan
from hpcorch.spec.schema import to_dict

log = logging.getLogger(__name__)


class SubmitError(HpcorchError):
    pass


def _executor_class():
    """A SlurmExecutor whose submission file is our rendered script (imported lazily: submitit
    is not needed for dry runs)."""
    import submitit

    class TemplateSlurmExecutor(submitit.SlurmExecutor):
        def __init__(self, plan: Plan, script: str):
            super().__init__(folder=plan.run.submitit_folder, python=shlex.quote(plan.python),
                             max_num_timeout=plan.job.requeue.max_timeouts)
            self.plan, self.script = plan, script
            res = plan.job.resources
            self.update_parameters(nodes=res.nodes, ntasks_per_node=plan.launched_tasks_per_node,
                                   time=plan.time_minutes)

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            if command != self.plan.submitit_command:  # the template and submitit must agree
                raise SubmitError(f"submitit's command {command!r} differs from the rendered one "
                                  f"{self.plan.submitit_command!r}")
            return self.script

    return TemplateSlurmExecutor


HandOver = Callable[[Plan, str, TrainTask], object]  # (plan, script, task) -> submitit's Job


def start(plan: Plan, script: str, hand_over: HandOver):
    """Write the run directory's job file and submit with ``hand_over`` (the backend's:
    :func:`submit_slurm` or :func:`submit_local`); returns submitit's Job."""
    import submitit

    _align_submitit_logging()
    run = plan.run
    task = _prepare(plan, script)
    try:
        job = hand_over(plan, script, task)
    except submitit.core.utils.FailedJobError as exc:
        raise SubmitError(f"sbatch rejected the job: {_slurm_message(str(exc))}") from None
    except RuntimeError as exc:
        if "srun" not in str(exc):
            raise
        raise SubmitError("no Slurm here (srun is not on PATH): submit from the cluster's login node, "
                          "or use -p local") from None
    log.info("submitted job %s with submitit (folder %s)", job.job_id, run.submitit_folder)
    return job


def _prepare(plan: Plan, script: str) -> TrainTask:
    """Write the run directory's job file and the submission's record; the task the ranks run."""
    run = plan.run
    if plan.job.program is not None:  # the ranks run it in the folder it names from here
        from hpcorch.plan.program import code_dir

        plan.job.program.code_dir = code_dir(plan.job.program)
    job_file = run.write_job(plan.job)
    # Where this was submitted from: every attempt's manifest records that code directory's state.
    record_submission(run, os.getcwd(), script, to_dict(plan.profile))
    # a program job runs the user's program on each task; otherwise hpcorch's trainer
    kind = ProgramTask if plan.job.program is not None else TrainTask
    return kind(str(job_file), str(run.root), plan.profile.scheduler, plan.peak_tflops)


def prepare_array_task(plan: Plan, script: str) -> Path:
    """Everything of :func:`start` but the sbatch, for a run that one task of a job array runs (a
    sweep point): the job file, the submission record, ``script`` (the point's own, run by the
    array's script) and submitit's pickled task, which the array script copies to the name
    submitit looks for under the task's id ``A_i``. Returns the pickle's path."""
    import submitit

    from hpcorch.util.fileio import atomic_write

    run = plan.run
    task = _prepare(plan, script)
    delayed = submitit.helpers.DelayedSubmission(task)
    delayed.set_timeout(plan.time_minutes, plan.job.requeue.max_timeouts)  # as submitit's executor does
    run.array_task_pickle.parent.mkdir(parents=True, exist_ok=True)
    delayed.dump(run.array_task_pickle)
    atomic_write(run.array_script, script)
    return run.array_task_pickle


def submit_slurm(plan: Plan, script: str, task: TrainTask):
    """sbatch our rendered ``script`` through submitit. submitit prints sbatch's refusal before
    raising it: :func:`start` says it once, in our words."""
    with contextlib.redirect_stderr(io.StringIO()):
        return _executor_class()(plan, script).submit(task)


def submit_local(plan: Plan, script: str, task: TrainTask):
    """Start submitit's local controller. It outlives this command: give it a log file, not our
    terminal (a caller reading our output would otherwise wait for the whole run)."""
    with _stdio_to(plan.run.controller_log):
        return _local_executor(plan).submit(task)


def _slurm_message(text: str) -> str:
    """Slurm's own words in submitit's error (its ``sbatch: error: ...`` lines)."""
    lines = [line.strip() for line in text.splitlines() if "error:" in line]
    return "; ".join(line.split("error:", 1)[1].strip() for line in lines) or text.strip().splitlines()[-1]


def _align_submitit_logging() -> None:
    """submitit configures its logger (INFO, its own handlers) when imported: follow hpcorch's
    level instead (-v shows its lines), and never print them twice through the root logger."""
    submitit_log = logging.getLogger("submitit")
    submitit_log.setLevel(logging.getLogger("hpcorch").getEffectiveLevel())
    submitit_log.propagate = False


@contextlib.contextmanager
def _stdio_to(path: Path):
    """Point file descriptors 1 and 2 at ``path`` while children are started."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _local_executor(plan: Plan):
    """submitit's local controller, set up as the job script would be: the same exports (in
    the same expanding form) and the same rank command, wrapper words first."""
    import submitit

    from hpcorch.spec.expand import UnsetVariable, expand_with, prepend_word, shell_word

    res = plan.job.resources
    setup = [f"export {k}={prepend_word(k, dirs)}" for k, dirs in plan.prepend.items()]
    setup += [f"export {k}={shell_word(v)}" for k, v in plan.environment.items()]
    # The controller starts ranks from an argv list, without a shell: expand the wrapper's
    # $NAMEs here, against the environment the setup above gives it.
    env = dict(os.environ)
    key = ""
    try:
        for name, dirs in plan.prepend.items():
            key = f"environment.prepend.{name}"
            env[name] = ":".join([expand_with(d, env) for d in dirs] + ([env[name]] if env.get(name) else []))
        for name, value in plan.environment.items():
            key = f"environment variable {name}"
            env[name] = expand_with(value, env)
        key = "launch.wrapper"
        argv = [expand_with(word, env) for word in plan.launch.prefix] + [plan.python]
    except UnsetVariable as exc:  # the Slurm script (set -u) stops on it the same way
        raise HpcorchError(f"{key}: {exc}; set it before submitting (on Slurm the script stops "
                           f"on it too: '{exc.name}: unbound variable')") from None
    executor = submitit.LocalExecutor(folder=plan.run.submitit_folder, python=shlex.join(argv))
    executor.update_parameters(tasks_per_node=res.nodes * plan.launched_tasks_per_node, nodes=1,
                               timeout_min=plan.time_minutes,
                               signal_delay_s=plan.job.requeue.signal_lead_s,
                               gpus_per_node=res.gpus_per_node, **({"setup": setup} if setup else {}))
    return executor
