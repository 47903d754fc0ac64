"""How a run stops and comes back: the one statement of the stop/requeue protocol.

1. **Signal.** The scheduler, or the user, signals every rank. The job's ``requeue.signal``
   (USR2 by default, sent ``signal_lead_s`` before the time limit or on preemption) means "you
   will be stopped; come back". SIGTERM and SIGINT mean "cancel". (:func:`stop_signals`)
2. **Flag.** The rank's handler only records the signal; it never acts inside the handler.
   (``hpcorch.train.stop.StopAgreement``)
3. **Agreement at a step boundary.** The flag rides on the step's loss all-reduce, so every
   rank learns of a signal any rank got at the same step; then the ranks agree on which one.
4. **Checkpoint.** Every rank writes its part; rank 0 commits. Nothing of the step is lost.
5. **Decision.** :func:`classify` names the cause (time left decides timeout versus
   preemption) and :func:`decide`, a pure function of cause x budget x scheduler x rank, says
   what to do: requeue, stop, refuse (the cause's budget is spent), follow rank 0, or leave.
6. **Action per scheduler.** :func:`carry_out`: on Slurm rank 0 runs ``scontrol requeue`` and
   leaves (Slurm ends the other ranks and queues the job); under submitit's local controller
   rank 0 exits :data:`LOCAL_REQUEUE` and the controller starts every task again; under
   ``hpcorch train`` the launcher exits :data:`CHECKPOINTED` and the user runs it again.
   After a SIGTERM every rank leaves as soon as the checkpoint is committed: Slurm sends one
   SIGTERM (a cancel, a node set down, a requeue or preemption it carries out itself) and then
   only SIGKILL after ``KillWait``; a rank waiting for a second signal would hold the nodes.

Before a rank can checkpoint (from its start until the trainer catches the signals) nothing is
lost by stopping: SIGTERM ends it at once, and the requeue signal is kept
(:func:`catch_early`) for the trainer's first step boundary. A rank killed by the requeue
signal before any handler (its first second) is a preemption or time limit all the same: the
batch host's recovery step reads srun's report and requeues within that budget.

A node failure sends no signal: Slurm requeues the job itself, and the next attempt counts it
(:func:`unplanned_restart`) against ``max_node_failures`` before it trains, unless accounting
says that Slurm's requeue was a preemption or the time limit (:func:`requeue_cause`). Slurm holds
such a requeue ~120 s too: the failed ranks, the batch shell or the next hpcorch command that
reads the job cut it (:func:`hpcorch.batch.recovery.watch_for_slurms_requeue`).

Budgets are counted in the run directory (``restarts.json``), so they survive every restart,
with the latest committed checkpoint at each granted requeue: attempts that commit nothing new
(``requeue.no_progress_attempts`` in a row) stop the job (:func:`no_progress`) at a failure or
the time limit, rather than requeue it until the budgets are spent.
"""
from __future__ import annotations

import enum
import json
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from hpcorch.errors import HpcorchError
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import atomic_write

# A rank that lost a peer (gloo's "Connection closed by peer", NCCL's watchdog): its error is a
# consequence, not a cause. Recovery (batch/failure.py) and `hpcorch train`'s ranks both tell it so.
PEER_LOST = re.compile(r"connection closed by peer|connection reset by peer|broken pipe|"
                       r"connection refused|socket (timeout|closed)|timed out|watchdog|"
                       r"communicator was aborted|remote process exited|peer .* (closed|died)", re.I)
# What most often sends each signal to a rank nobody asked to stop: the "likely cause" every
# report of a rank killed outright gives (hpcorch train's launcher, recovery, status).
LIKELY_SENDER = {
    signal.SIGKILL: "the kernel's OOM killer, or a kill -9",
    signal.SIGSEGV: "a crash in native code: torch, a CUDA library or an extension",
    signal.SIGBUS: "a bad memory access: a truncated memory-mapped file, or a full /dev/shm",
    signal.SIGABRT: "an abort in native code (its log has the message)",
    signal.SIGILL: "an instruction this CPU lacks: a build for another CPU",
    signal.SIGFPE: "an arithmetic fault in native code",
}


def killed_by_text(signum: int) -> str:
    """``SIGKILL (the kernel's OOM killer, or a kill -9)``: a signal's name and likely sender."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"{name} ({LIKELY_SENDER[signum]})" if signum in LIKELY_SENDER else name


# Exit codes, named once.
DONE = 0
CLEAR_ERROR = HpcorchError.exit_code  # 2: a one-line error was printed (config, checkpoint, busy run dir)
CHECKPOINTED = 3       # every rank checkpointed on a signal: start the same command again
HEALTH_FAILED = 4      # this node failed a pre-flight health check (its report names the check)
LOCAL_REQUEUE = 144    # submitit's local controller starts every task again on this code



class Cause(str, enum.Enum):
    PREEMPTION = "preemption"
    TIMEOUT = "timeout"
    NODE_FAILURE = "node_failure"
    CANCEL = "cancel"


class Action(str, enum.Enum):
    REQUEUE = "requeue"   # come back (a node failure: carry on with this attempt)
    STOP = "stop"         # checkpoint committed; nothing restarts the job
    REFUSE = "refuse"     # the cause's budget is spent: stop, and say why
    FOLLOW = "follow"     # not rank 0: do what rank 0's action brings about
    LEAVE = "leave"       # not rank 0, after a SIGTERM: Slurm ends the job already; exit now


@dataclass(frozen=True)
class Decision:
    """What to do about a stop, and why."""

    action: Action
    reason: str


def stop_signals(scheduler: str, policy) -> tuple[int, ...]:
    """The signals that stop training at the next step boundary."""
    if scheduler == "process":
        return (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
    return (policy.signum, signal.SIGTERM, signal.SIGINT)


def classify(signum: int, policy, time_left_s: int | None) -> Cause:
    """Why the ranks were signalled: a cancel, or (for the requeue signal) the time limit when
    little time is left, else preemption."""
    if signum != policy.signum:
        return Cause.CANCEL
    if time_left_s is not None and time_left_s <= policy.signal_lead_s + 60:
        return Cause.TIMEOUT
    return Cause.PREEMPTION


def budget_limit(policy, cause: Cause) -> int:
    return {Cause.PREEMPTION: policy.max_preemptions, Cause.TIMEOUT: policy.max_timeouts,
            Cause.NODE_FAILURE: policy.max_node_failures}[cause]


def decide(cause: Cause, spent: dict, policy, scheduler: str, rank: int) -> Decision:
    """What a rank does after the signal's checkpoint (or, for a node failure, at start-up)."""
    if scheduler == "process":
        return Decision(Action.STOP, "checkpointed; run the same command again to resume")
    if rank != 0:
        if cause is Cause.CANCEL:  # Slurm's one SIGTERM is spent: nothing else would end us but SIGKILL
            return Decision(Action.LEAVE, "the scheduler ends the job; checkpoint committed")
        return Decision(Action.FOLLOW, "rank 0 decides")
    if cause is Cause.CANCEL:
        return Decision(Action.STOP, "cancelled")
    if not policy.enabled:
        return Decision(Action.STOP, "requeue.enabled is false; not requeued")
    # A preemption is the scheduler's choice, not the job failing to progress: never a verdict.
    stuck = no_progress(spent, policy.no_progress_attempts) if cause is not Cause.PREEMPTION else None
    if stuck:
        return Decision(Action.REFUSE, stuck)
    limit, used = budget_limit(policy, cause), spent.get(cause.value, 0)
    if used >= limit:
        return Decision(Action.REFUSE, f"{cause.value} budget spent ({used} of {limit}); not requeued")
    return Decision(Action.REQUEUE, f"{cause.value} {used + 1} of {limit}")


def no_progress(spent: dict, attempts: int) -> str | None:
    """The stop verdict when the last ``attempts`` attempts (this one included) committed no new
    checkpoint, else None (also when ``attempts`` is 0: never). ``spent["checkpoints"]`` holds
    the latest committed checkpoint at each earlier granted requeue, ``spent["latest_checkpoint"]``
    the one now (:meth:`RestartBudget.load`); the first attempt's start is not recorded, so the
    window opens at the first requeue."""
    history = spent.get("checkpoints") or []
    if attempts < 1 or len(history) < attempts:
        return None
    latest = spent.get("latest_checkpoint")
    if history[-attempts] != latest:
        return None
    where = "no checkpoint committed yet" if latest is None else f"still at the checkpoint of step {latest}"
    return (f"no progress: {attempts} attempt{'s' if attempts != 1 else ''} in a row committed no new "
            f"checkpoint ({where}); see failures.jsonl and the rank logs, fix the cause and resume "
            f"(requeue.no_progress_attempts: 0 turns this off)")


# What accounting calls a run that Slurm ended and requeued itself (``sacct -D``'s State).
_REQUEUE_CAUSES = {"PREEMPTED": Cause.PREEMPTION, "TIMEOUT": Cause.TIMEOUT}


def requeue_cause(previous_state: str | None) -> Cause:
    """Why Slurm requeued the job by itself, from accounting's state of the run before this
    one: a preemption or the time limit is the scheduler's own stop, never a node failure;
    anything else (NODE_FAIL, or no accounting) counts as a node failure."""
    return _REQUEUE_CAUSES.get((previous_state or "").split(" ")[0], Cause.NODE_FAILURE)


def unplanned_restart(restart_count: int, spent: dict[str, int]) -> bool:
    """Whether Slurm restarted the job more often than our own requeues explain (a node
    failure: Slurm requeued it without a signal of ours)."""
    planned = sum(spent.get(c.value, 0) for c in (Cause.PREEMPTION, Cause.TIMEOUT, Cause.NODE_FAILURE))
    return restart_count > planned


class RestartBudget:
    """Requeues spent per cause, the latest committed checkpoint at each granted requeue, and
    the last refusal (the job's stop verdict), in ``restarts.json``."""

    EMPTY = {"preemption": 0, "timeout": 0, "node_failure": 0, "refused": "", "checkpoints": []}

    def __init__(self, run: RunDir):
        self.run = run

    def load(self) -> dict:
        """The recorded budget, and the latest committed checkpoint now (``latest_checkpoint``,
        read from the run, never stored): what :func:`decide` weighs."""
        return {**self.EMPTY, **self.run.restarts(), "latest_checkpoint": self.run.latest_checkpoint()}

    def record(self, cause: Cause, decision: Decision) -> None:
        """Count a granted requeue (and the checkpoint it resumes from), or note a refusal
        (``hpcorch status`` shows it)."""
        data = self.load()
        latest = data.pop("latest_checkpoint")
        if decision.action is Action.REQUEUE:
            data[cause.value] += 1
            data["checkpoints"] = [*data["checkpoints"], latest]
            data["refused"] = ""
        elif decision.action is Action.REFUSE:
            data["refused"] = decision.reason
        else:
            return
        atomic_write(self.run.restarts_file, json.dumps(data))


class NotRequeued(RuntimeError):
    """The run checkpointed and ends here; the message says why."""


def carry_out(decision: Decision, scheduler: str, requeue_on_slurm: Callable[[], None],
              exit_now: Callable[[int], None], wait_to_be_ended: Callable[[], None]) -> None:
    """Do what ``decision`` says on ``scheduler``. The effects are passed in (the caller owns
    the Slurm client and the process), so this statement stays free of both."""
    action = decision.action
    if action in (Action.STOP, Action.REFUSE):
        raise NotRequeued(decision.reason)
    if action is Action.LEAVE:
        exit_now(CHECKPOINTED)
        return
    if scheduler == "local":
        # The controller restarts every task if any exits LOCAL_REQUEUE: only rank 0 may.
        exit_now(LOCAL_REQUEUE if action is Action.REQUEUE else CHECKPOINTED)
    elif action is Action.REQUEUE:
        requeue_on_slurm()
        exit_now(CHECKPOINTED)  # the requeue is registered: Slurm ends the others and queues the job
    else:
        wait_to_be_ended()      # rank 0 requeues or fails; srun --kill-on-bad-exit ends us


# ----- before the trainer catches the signals ---------------------------------------------------
_early: dict[str, float] = {}


def catch_early(requeue_signum: int) -> None:
    """From a rank's start until the trainer installs its own handlers: SIGTERM ends the rank
    at once (nothing is trained yet, so nothing is lost, and a handler here would meet a rank
    blocked in a C call, held until SIGKILL), and the requeue signal is kept for the trainer,
    which stops at its first step boundary (:func:`early_signal`). Replaces submitit's handlers,
    which would ignore SIGTERM and requeue without the protocol."""
    def keep(signum: int, _frame=None) -> None:
        _early.setdefault("signum", signum)
        _early.setdefault("time", time.time())

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(requeue_signum, keep)


def early_signal() -> tuple[int, float] | None:
    """The signal :func:`catch_early` kept (and when it came), or None."""
    return (int(_early["signum"]), _early["time"]) if _early else None
