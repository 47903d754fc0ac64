"""What submitit runs on every task of a ``program:`` job: the user's own training program,
with torchrun's environment and hpcorch's, under the same stop/requeue protocol as the trainer.

One task per rank (``launcher: direct``) starts the program once; one task per node
(``launcher: torchrun``) starts torchrun, which starts the node's ranks. Then:

* the job's requeue signal (preemption, or ``signal_lead_s`` before the limit) is passed on to
  the program as ``program.signal``; SIGTERM/SIGINT (cancel) as SIGTERM;
* exit 0 (and no marker): the job is COMPLETED, never retried;
* exit 3 (:data:`hpcorch.protocol.CHECKPOINTED`), or this attempt's requeue marker, or any end
  after our signal (a program that does not catch it was killed at a step boundary unknown):
  the cause is classified and the job requeued within that cause's budget, as the trainer's;
* a program killed by the kernel or the hardware (SIGKILL, SIGSEGV, ...) takes its task with it
  by the same signal, and one ended by Slurm's SIGTERM (a cancel, or srun ending the step after
  another rank failed) by SIGTERM: srun reports them as it reports the trainer's ranks;
* any other exit is a failure: the rank's exit record (with the program's last stderr line)
  and srun's lines go to :mod:`hpcorch.batch.recovery` (which node, crash loop, quarantine);
  a program that cannot start (not found, not executable, module not importable) is a clear
  error: one line, never a requeue.
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hpcorch import protocol
from hpcorch.batch.task import RankFailed, TrainTask, _requeue, _wait_to_be_ended, resolve_address
from hpcorch.errors import HpcorchError
from hpcorch.protocol import NotRequeued, RestartBudget
from hpcorch.runtime.env import (
    Rendezvous,
    hpcorch_env,
    module_importable,
    program_argv,
    requeue_marker,
    torchrun_env,
)
from hpcorch.spec.job import load_job
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import json_lines

log = logging.getLogger(__name__)


@dataclass
class ProgramTask(TrainTask):
    """A :class:`TrainTask` whose rank runs the job's ``program`` instead of the trainer (the
    claim, manifest, budgets, exit records and early-signal handling are the same)."""

    _last_error: str = ""

    def _record_exit(self, code: int, error: str) -> None:
        super()._record_exit(code, error or self._last_error)

    def _run(self) -> dict:
        import submitit

        job = load_job(self.job_file)
        program = job.program
        dist = submitit.helpers.TorchDistributedEnvironment()
        job_id = submitit.JobEnvironment().job_id
        run = RunDir.for_job(self.run_dir, job)
        budget = RestartBudget(run)
        self._claim(run, job_id, dist.rank)
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        before = budget.load().get("node_failure", 0)
        if dist.rank == 0:
            from hpcorch.batch.manifest import write_attempt

            write_attempt(run, job_id, self.scheduler, code_dir=program.code_dir)
            if self.scheduler == "slurm":
                self._count_unplanned_restart(job, budget)
        cause = "node_failure" if budget.load().get("node_failure", 0) > before else restart_cause(run, attempt)
        rv = self._rendezvous(job, dist)
        check_startable(program)
        deadline = self._deadline(job_id, dist.rank)
        env = {**os.environ, **(torchrun_env(rv, job_id) if program.launcher == "direct" else {}),
               **hpcorch_env(str(run.root), str(run.checkpoints), attempt, cause, deadline, program.signal,
                             job_id, program.steps, time.time())}
        argv = program_argv(program, rv, python=sys.executable, env=env)
        if dist.rank == 0:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
            run.append_event("process_start", durable=True, time=time.time(), step=run.progress().get("step", 0),
                             attempt=attempt, cause=cause, program=program.describe)
        code, got, last_lines = run_program(argv, program.code_dir, env, job.requeue.signum,
                                            getattr(signal, f"SIG{program.signal}"))
        marker = Path(requeue_marker(str(run.root), attempt)).exists()
        if code == 0 and not marker:
            return write_summary(run, program.describe, time.time()) if dist.rank == 0 else {}
        if code != protocol.CHECKPOINTED and not marker:
            if -code in HARD_SIGNALS:
                die_of(-code)
            if got is None:
                said = f": {last_lines[-1]}" if last_lines else ""
                self._last_error = f"the program exited with code {code}{said}"
                raise RankFailed(code if code > 0 else 128 - code)
            if got[0] != job.requeue.signum and self.scheduler == "slurm":
                # Slurm ends the step (a cancel, or srun ending the others after a rank failed):
                # the program's end is no checkpoint of the protocol's. Dying of the SIGTERM says so
                # to recovery, where an exit 3 would claim the protocol acted (and the failed rank's
                # node would go unjudged, the job unrequeued).
                die_of(signal.SIGTERM)
        return self._after_stop(job, run, budget, job_id, dist.rank, got)

    def _after_stop(self, job, run: RunDir, budget: RestartBudget, job_id: str, rank: int,
                    got: tuple[int, float] | None) -> dict:
        """The program stopped for a signal of ours or said "checkpointed, resume me": the
        trainer's decision, from here on (classify, decide, carry out)."""
        signum, when = got if got is not None else (job.requeue.signum, time.time())
        cause = protocol.classify(signum, job.requeue, self._time_left_s(job_id) if rank == 0 else None)
        decision = protocol.decide(cause, budget.load(), job.requeue, self.scheduler, rank)
        if rank == 0:
            budget.record(cause, decision)
            run.append_event("signal", durable=True, time=when, signal=signum, cause=cause.value,
                             step=run.progress().get("step"))
        log.info("after %s: %s (%s)", cause.value, decision.action.value, decision.reason)
        try:
            protocol.carry_out(decision, self.scheduler, requeue_on_slurm=lambda: _requeue(job_id),
                               exit_now=os._exit, wait_to_be_ended=_wait_to_be_ended)
        except NotRequeued as exc:
            raise NotRequeued(f"{exc}; the program's latest checkpoint: step {run.latest_checkpoint()}") from None
        return {}

    def _rendezvous(self, job, dist) -> Rendezvous:
        """torchrun's numbers: one task per rank (direct), or one per node (torchrun)."""
        addr = resolve_address(dist.master_addr)
        node_rank = int(os.environ.get("SLURM_NODEID", "0") or 0)
        if job.program.launcher == "torchrun":
            per_node = job.resources.tasks_per_node
            return Rendezvous(rank=dist.rank * per_node, local_rank=0, world_size=dist.world_size * per_node,
                              local_world_size=per_node, node_rank=dist.rank, nodes=dist.world_size,
                              master_addr=addr, master_port=dist.master_port)
        return Rendezvous(rank=dist.rank, local_rank=dist.local_rank, world_size=dist.world_size,
                          local_world_size=dist.local_world_size, node_rank=node_rank,
                          nodes=dist.world_size // max(dist.local_world_size, 1),  # a node range: this attempt's
                          master_addr=addr, master_port=dist.master_port)

    def _deadline(self, job_id: str, rank: int) -> float | None:
        """When the allocation ends: Slurm's SLURM_JOB_END_TIME where it sets it, else asked once
        (rank 0, or submitit's local timeout); the other ranks then leave it unknown."""
        end = os.environ.get("SLURM_JOB_END_TIME")
        if end and end.isdigit():
            return float(end)
        if rank != 0 and self.scheduler == "slurm":
            return None
        try:
            left = self._time_left_s(job_id)
        except Exception as exc:  # the deadline is advice to the program, never a reason to fail
            log.warning("hpcorch: time left unknown (%s)", exc)
            return None
        return time.time() + left if left is not None else None


# Deaths the kernel or the hardware deals (the OOM killer, a segfault; failure.HARD_DEATHS):
# a program that dies of one takes its task with it by the same signal.
HARD_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL,
                          signal.SIGFPE})


def die_of(signum: int) -> None:
    """End this task by ``signum``, as its program ended: srun then reports the task as it
    reports a killed trainer rank ("tasks 2-3: Killed"), the hard evidence that convicts the
    node (an exit code 137 would be a rank's own error, soft evidence: no quarantine)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if signum != signal.SIGKILL:
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(5)  # the signal is pending on this thread; never go on as if it had not come
    os._exit(128 + signum)


def write_summary(run: RunDir, what: str, now: float) -> dict:
    """``summary.json`` of a program that completed (exit 0): what says "completed" to ``ls`` and
    ``status`` for every backend, with the progress the program reported, if any."""
    import json

    from hpcorch.util.fileio import atomic_write

    progress = run.progress()
    summary = {"program": what, "completed": now, "final_step": progress.get("step"),
               "final_loss": progress.get("loss"), "restarts": progress.get("restarts", 0),
               "steps_recomputed": progress.get("steps_recomputed", 0),
               "latest_checkpoint": run.latest_checkpoint()}
    atomic_write(run.summary_file, json.dumps(summary, indent=2) + "\n")
    return summary


def restart_cause(run: RunDir, attempt: int) -> str:
    """Why this attempt started, from the run's events: none (its first start), the cause of the
    last stop hpcorch recorded (preemption, timeout, cancel), failure (recovery requeued it), or
    resume (a new job into a run directory that ran before)."""
    cause = None
    for event in json_lines(run.events):
        if event.get("event") == "signal":
            cause = event.get("cause") or "preemption"
        elif event.get("event") == "failure":
            cause = "failure"
        elif event.get("event") == "process_start":
            cause = cause or "resume"
    return cause or ("none" if attempt == 0 else "node_failure")


def check_startable(program) -> None:
    """Raise one line if the program cannot start here: its code folder, its executable, its
    Python module (a requeue could never help)."""
    code = program.code_dir
    if code and not os.path.isdir(code):
        raise HpcorchError(f"program.code_dir {code} is not a folder on this node")
    if program.module is not None:
        module = program.module.split(":")[0]
        if not module_importable(module, code):
            raise HpcorchError(f"program.module: no module named {module!r} in {code or os.getcwd()} or "
                               f"the installed packages")


def run_program(argv: list[str], cwd: str | None, env: dict, requeue_signum: int,
                program_signum: int, keep: int = 6) -> tuple[int, tuple[int, float] | None, list[str]]:
    """Run ``argv`` to its end, passing our stop signals on (the requeue signal as
    ``program_signum``, a cancel as SIGTERM). Returns its exit code (negative: killed by that
    signal), the first stop signal we got with its time (or None), and its last stderr lines
    (its stderr is copied through to ours as it comes)."""
    try:
        # Its own session: Slurm's signals reach it only through us, as the program chose them.
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise HpcorchError(f"program: {argv[0]!r} not found (in {cwd or os.getcwd()} or on PATH)") from None
    except PermissionError:
        raise HpcorchError(f"program: {argv[0]!r} is not executable (chmod +x it, or start it with "
                           f"its interpreter)") from None
    got: list[tuple[int, float]] = []

    def forward(signum, _frame):
        if not got:
            got.append((signum, time.time()))
        if proc.poll() is None:
            proc.send_signal(program_signum if signum == requeue_signum else signal.SIGTERM)

    stops = (requeue_signum, signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, forward) for s in stops}
    tail: collections.deque[str] = collections.deque(maxlen=keep)
    copier = threading.Thread(target=_copy, args=(proc.stderr, tail), daemon=True)
    copier.start()
    try:
        code = proc.wait()
        copier.join(timeout=5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # never leave the program behind (an exception above)
            proc.kill()
            proc.wait()
    return code, (got[0] if got else None), list(tail)


def _copy(stream, tail: collections.deque) -> None:
    """The program's stderr to ours, line by line, keeping the last lines for the exit record."""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    for line in iter(stream.readline, b""):
        if out is not None:
            out.write(line)
            out.flush()
        else:
            sys.stderr.write(line.decode(errors="replace"))
        text = line.decode(errors="replace").rstrip()
        if text.strip():
            tail.append(text)
    stream.close()
