"""What submitit runs on every task of a job: join torch.distributed through submitit's
environment, run the rank (the same entry as ``hpcorch train``'s processes), then carry out
the stop/requeue protocol's decision (see :mod:`hpcorch.protocol`).

Imported on the login node to pickle :class:`TrainTask`: no torch at module level. What
:meth:`TrainTask.checkpoint` needs is imported here, at module level, on purpose: submitit may
call it from a signal handler while the task is still importing, and an import started inside
the handler would meet half-imported modules.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import psutil

from hpcorch import protocol
from hpcorch.batch.recovery import start_when_pending, watch_for_slurms_requeue
from hpcorch.cluster.slurm import Slurm
from hpcorch.errors import HpcorchError
from hpcorch.protocol import Action, Cause, NotRequeued, RestartBudget
from hpcorch.spec.job import load_job
from hpcorch.state.rundir import LEASE_ENV, Lease, RunDir
from hpcorch.train.faults import start_delay

log = logging.getLogger(__name__)


class RankFailed(RuntimeError):
    """The rank ended with an error (its log has the one-line reason)."""

    def __init__(self, exit_code: int):
        super().__init__(f"the rank failed with exit code {exit_code}")
        self.exit_code = exit_code


@dataclass
class TrainTask:
    job_file: str
    run_dir: str
    scheduler: str                 # "slurm" or "local"
    peak_tflops: float | None = None

    def __call__(self) -> dict:
        """Train this rank. Errors end the task with one ``error:`` line and an exit code (see
        :mod:`hpcorch.protocol`), never with a traceback in the rank's log."""
        try:
            return self._run()
        except (HpcorchError, NotRequeued) as exc:
            code = protocol.CHECKPOINTED if isinstance(exc, NotRequeued) else protocol.CLEAR_ERROR
            print(f"error: {exc}", file=sys.stderr, flush=True)
            if code != protocol.CHECKPOINTED:
                self._record_exit(code, str(exc))
        except RankFailed as exc:  # the rank printed its own one-line reason
            code = exc.exit_code
            self._record_exit(code, "")
            self._watch_for_requeue()
        except BaseException as exc:  # a crash: recorded for recovery, then submitit logs the traceback
            self._record_exit(1, f"{type(exc).__name__}: {exc}")
            self._watch_for_requeue()
            raise
        sys.exit(code)  # SystemExit passes through submitit's handler: no traceback, this exit code

    def _record_exit(self, code: int, error: str) -> None:
        """Leave this rank's side of a failure where :mod:`hpcorch.batch.recovery` looks: which rank on
        which node, its exit code and error (a rank killed outright leaves nothing, which says as much)."""
        import json

        from hpcorch.util.fileio import atomic_write

        env = os.environ
        record = {"rank": int(env.get("SLURM_PROCID", "0") or 0),
                  "node": env.get("SLURMD_NODENAME") or socket.gethostname(),
                  "exit_code": code, "error": error.strip().splitlines()[-1][:2000] if error.strip() else "",
                  "time": time.time()}
        attempt = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        path = RunDir(self.run_dir).exit_record(attempt, record["rank"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(record), durable=False)
        except (OSError, HpcorchError) as exc:  # a full disk must not hide the failure it is recording
            log.warning("hpcorch: could not record this rank's exit: %s", exc)

    def _watch_for_requeue(self) -> None:
        """A failed rank on Slurm: if the batch host failed with it (its recovery step never
        runs), Slurm requeues the job itself; cut that requeue's hold (one watcher per attempt)."""
        if self.scheduler == "slurm":
            watch_for_slurms_requeue(RunDir(self.run_dir))

    def _run(self) -> dict:
        import submitit

        from hpcorch.train.rank import run_rank

        job = load_job(self.job_file)
        protocol.catch_early(job.requeue.signum)  # first: submitit's handlers would ignore SIGTERM
        env = submitit.helpers.TorchDistributedEnvironment()
        env.export(set_cuda_visible_devices=False)
        os.environ["MASTER_ADDR"] = resolve_address(env.master_addr)
        job_id = submitit.JobEnvironment().job_id
        run = RunDir.for_job(self.run_dir, job)
        budget = RestartBudget(run)
        self._claim(run, job_id, env.rank)
        if env.rank == 0:  # what runs in this attempt: code, packages, versions (hpcorch manifest)
            from hpcorch.batch.manifest import write_attempt

            write_attempt(run, job_id, self.scheduler)
        if self.scheduler == "slurm" and env.rank == 0:
            self._count_unplanned_restart(job, budget)
        start_delay()
        outcome = run_rank(self.job_file, self.run_dir, self.scheduler, peak_tflops=self.peak_tflops)
        if outcome.exit_code == protocol.DONE:
            if env.rank == 0:
                _mark_array_task_done(run)
            return run.summary() if env.rank == 0 else {}
        if outcome.exit_code != protocol.CHECKPOINTED:
            raise RankFailed(outcome.exit_code)
        cause = protocol.classify(outcome.agreed_signal, job.requeue,
                                  self._time_left_s(job_id) if env.rank == 0 else None)
        decision = protocol.decide(cause, budget.load(), job.requeue, self.scheduler, env.rank)
        if cause is Cause.CANCEL and self.scheduler == "slurm" and env.rank == 0:
            decision = _what_slurm_does(job_id, decision)
        budget.record(cause, decision)
        stopped_by = cause.value if cause is not Cause.CANCEL else signal.Signals(outcome.agreed_signal).name
        log.info("after %s: %s (%s)", stopped_by, decision.action.value, decision.reason)
        try:
            protocol.carry_out(decision, self.scheduler,
                               requeue_on_slurm=lambda: _requeue(job_id),
                               exit_now=os._exit, wait_to_be_ended=_wait_to_be_ended)
        except NotRequeued as exc:
            raise NotRequeued(f"{exc}; checkpoint committed at step {run.latest_checkpoint()}") from None
        return {}

    def _claim(self, run: RunDir, job_id: str, rank: int) -> None:
        """Every rank refuses a run directory another live job holds (so none waits for a
        peer that gave up) and carries this attempt's lease token (checked before each commit);
        rank 0 records this job and attempt as the holder."""
        from hpcorch.state.jobstate import lease_is_live

        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        lease = Lease.for_holder(self.scheduler, job_id, attempt=attempt, slurm_conf=os.environ.get("SLURM_CONF"))
        run.ensure_free(lease, lease_is_live)
        os.environ[LEASE_ENV] = lease.token()
        if rank == 0:
            run.take(lease)

    def _time_left_s(self, job_id: str) -> int | None:
        """Seconds until the time limit: squeue's word on Slurm; under submitit's local
        controller its per-run timeout less the time this task (started with the run) has run."""
        if self.scheduler == "local":
            limit = int(os.environ.get("SUBMITIT_LOCAL_TIMEOUT_S", "0") or 0)
            return limit - int(time.time() - psutil.Process().create_time()) if limit else None
        return _slurm().time_left(job_id)

    @staticmethod
    def _count_unplanned_restart(job, budget: RestartBudget) -> None:
        """A restart no signal of ours asked for: Slurm requeued the job itself, after a node
        failure, or after a preemption or the time limit whose signal came before any handler."""
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        spent = budget.load()
        if not protocol.unplanned_restart(restarts, spent):
            return
        cause = protocol.requeue_cause(_previous_run_state(os.environ.get("SLURM_JOB_ID", "")))
        decision = protocol.decide(cause, spent, job.requeue, "slurm", 0)
        budget.record(cause, decision)
        if decision.action is not Action.REQUEUE:
            log.error("hpcorch: %s", decision.reason)
            raise NotRequeued(decision.reason)

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on rank 0 only while its own handler still holds the signal
        (before the trainer took over): nothing is lost then. The early signal is counted as
        what it is (a preemption or the time limit; never later mistaken for a node failure)
        and requeued within that budget; returning None tells submitit not to requeue."""
        import submitit

        try:
            job = load_job(self.job_file)
            budget = RestartBudget(RunDir.for_job(self.run_dir, job))
            job_id = submitit.JobEnvironment().job_id
            cause = protocol.classify(job.requeue.signum, job.requeue, self._time_left_s(job_id))
            decision = protocol.decide(cause, budget.load(), job.requeue, self.scheduler, 0)
            budget.record(cause, decision)
        except Exception as exc:  # inside a signal handler: never fail the job over the book-keeping
            log.warning("hpcorch: signalled before training started; not counted (%s)", exc)
            return submitit.helpers.DelayedSubmission(self)
        log.warning("hpcorch: signalled before training started (%s): %s", cause.value, decision.reason)
        if decision.action is not Action.REQUEUE:
            return None
        if self.scheduler == "slurm":  # our requeue, with its hold cut (submitit's would leave it)
            _requeue(job_id)
            os._exit(protocol.CHECKPOINTED)
        return submitit.helpers.DelayedSubmission(self)


def _mark_array_task_done(run: RunDir) -> None:
    """A sweep point that completed: its array task's marker (after summary.json, which the
    trainer wrote durably), so ``sweep resume`` submits it no more."""
    from hpcorch.state.arraytasks import ENV_ROOT, current_task, current_tasks

    if os.environ.get(ENV_ROOT):
        current_tasks().mark_done(current_task(), {"run_dir": str(run.root)})


def _slurm() -> Slurm:
    return Slurm()


def _previous_run_state(job_id: str) -> str | None:
    """Accounting's state of the job's run before this one (``PREEMPTED``, ``NODE_FAIL``, ...),
    None where accounting cannot say."""
    from hpcorch.cluster.slurm import SlurmError

    try:
        runs = _slurm().attempts([job_id]).get(job_id, [])
    except SlurmError:
        return None
    return runs[-2]["State"] if len(runs) >= 2 else None


def _what_slurm_does(job_id: str, decision: protocol.Decision) -> protocol.Decision:
    """Rank 0 after a SIGTERM stop: what Slurm is doing to the job, in words. When Slurm
    requeues it itself (a node set down, a preemption it carries out), the next attempt counts
    the cause and this attempt cuts the requeue's hold; a cancel stays a cancel."""
    from hpcorch.cluster.slurm import SlurmError

    slurm = _slurm()
    try:
        info = slurm.job(job_id)
        requeued = int(info.get("Restarts", "0") or 0) > int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        nodes = os.environ.get("SLURM_JOB_NODELIST", "")
        down = slurm.unhealthy_among(nodes) if nodes else []
    except (SlurmError, ValueError):
        return decision
    state = info.get("JobState", "")
    failed = f"node {', '.join(down)} failed (Slurm reports it down)" if down else ""
    if requeued:
        start_when_pending(job_id)
        why = f"{failed}; Slurm requeues the job" if failed else \
            "Slurm requeues the job itself (a preemption, or an operator's requeue)"
        return protocol.Decision(Action.LEAVE, f"{why}; the next attempt resumes from this checkpoint")
    if failed:
        return protocol.Decision(Action.STOP, f"{failed}; Slurm ended the job without requeuing it")
    if state == "TIMEOUT":
        return protocol.Decision(Action.STOP, "the time limit ended the job before requeue.signal came; "
                                              "raise requeue.signal_lead_s")
    if state == "PREEMPTED":
        return protocol.Decision(Action.STOP, "preempted, and Slurm cancels preempted jobs of this partition")
    return decision


def _requeue(job_id: str) -> None:
    """Requeue the job (its checkpoint is committed), and let it start again at once instead
    of after Slurm's ~120 s ``BeginTime`` hold (see :func:`hpcorch.batch.recovery.start_when_pending`).
    The requeue SIGTERMs this process too: ignored, so that it cannot end us before the hold
    is dealt with (we exit right after)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _slurm().requeue(job_id)
    start_when_pending(job_id)


def _wait_to_be_ended() -> None:
    """Not rank 0 on Slurm: rank 0 requeues (Slurm then ends us) or fails (srun
    --kill-on-bad-exit ends us). Slurm's SIGTERM must end us at once, not set a training flag."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    time.sleep(600)
    os._exit(protocol.CHECKPOINTED)


def resolve_address(host: str) -> str:
    """``host`` if it resolves, else the NodeAddr Slurm knows it by (emulated nodes, or
    clusters whose node names are not in DNS)."""
    try:
        socket.gethostbyname(host)
        return host
    except OSError:
        pass
    address = _slurm().show("node", host).get("NodeAddr")
    if not address:
        raise RuntimeError(f"cannot resolve {host} and Slurm knows no NodeAddr for it")
    return address
