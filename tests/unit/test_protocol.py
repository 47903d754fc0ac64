"""The stop/requeue protocol's decision: a pure function, tested over its whole table."""
import itertools
import json
import signal

import pytest

from hpcorch import protocol
from hpcorch.protocol import Action, Cause, Decision, RestartBudget, classify, decide, unplanned_restart
from hpcorch.spec.job import RequeuePolicy
from hpcorch.state.rundir import RunDir

POLICY = RequeuePolicy(max_preemptions=2, max_timeouts=1, max_node_failures=0)
OFF = RequeuePolicy(enabled=False)
SPENT_NONE = {"preemption": 0, "timeout": 0, "node_failure": 0}
SPENT_ALL = {"preemption": 2, "timeout": 1, "node_failure": 0}


def expected(cause, spent, policy, scheduler, rank):
    """The table, written out independently of the implementation's order of checks."""
    if scheduler == "process":
        return Action.STOP
    if rank != 0:  # after a SIGTERM Slurm ends the job already: nothing to wait for
        return Action.LEAVE if cause is Cause.CANCEL else Action.FOLLOW
    if cause is Cause.CANCEL or not policy.enabled:
        return Action.STOP
    limit = {Cause.PREEMPTION: policy.max_preemptions, Cause.TIMEOUT: policy.max_timeouts,
             Cause.NODE_FAILURE: policy.max_node_failures}[cause]
    return Action.REFUSE if spent[cause.value] >= limit else Action.REQUEUE


CASES = list(itertools.product(list(Cause), [SPENT_NONE, SPENT_ALL], [POLICY, OFF],
                               ["slurm", "local", "process"], [0, 1, 7]))


@pytest.mark.parametrize("cause,spent,policy,scheduler,rank", CASES)
def test_decision_table(cause, spent, policy, scheduler, rank):
    decision = decide(cause, spent, policy, scheduler, rank)
    assert decision.action is expected(cause, spent, policy, scheduler, rank)
    assert decision.reason


def test_node_failure_with_zero_budget_is_refused_on_first_use():
    decision = decide(Cause.NODE_FAILURE, SPENT_NONE, POLICY, "slurm", 0)
    assert decision.action is Action.REFUSE and "node_failure budget spent (0 of 0)" in decision.reason


@pytest.mark.parametrize("signum,left,cause", [
    (signal.SIGUSR2, None, Cause.PREEMPTION),     # time left unknown: not the limit
    (signal.SIGUSR2, 3600, Cause.PREEMPTION),
    (signal.SIGUSR2, 120 + 60, Cause.TIMEOUT),    # within lead + a minute of the limit
    (signal.SIGUSR2, 30, Cause.TIMEOUT),
    (signal.SIGTERM, 30, Cause.CANCEL),
    (signal.SIGINT, None, Cause.CANCEL),
    (signal.SIGUSR1, 3600, Cause.CANCEL),         # not the job's requeue signal
])
def test_classify(signum, left, cause):
    assert classify(signum, RequeuePolicy(signal="USR2", signal_lead_s=120), left) is cause


def test_stop_signals_per_scheduler():
    policy = RequeuePolicy(signal="USR1")
    assert protocol.stop_signals("slurm", policy) == (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    assert signal.SIGUSR2 in protocol.stop_signals("process", policy)


def test_unplanned_restarts_are_those_our_requeues_do_not_explain():
    assert not unplanned_restart(0, SPENT_NONE)
    assert unplanned_restart(1, SPENT_NONE)
    assert not unplanned_restart(3, SPENT_ALL)
    assert unplanned_restart(4, SPENT_ALL)


def test_budget_counts_granted_requeues_and_notes_refusals(tmp_path):
    budget = RestartBudget(RunDir(tmp_path))
    policy = RequeuePolicy(max_preemptions=2, max_timeouts=1, max_node_failures=1)
    for _ in range(3):
        cause = Cause.PREEMPTION
        budget.record(cause, decide(cause, budget.load(), policy, "slurm", 0))
    data = json.loads((tmp_path / "restarts.json").read_text())
    assert (data["preemption"], data["timeout"]) == (2, 0)
    assert "preemption budget spent (2 of 2)" in budget.load()["refused"]
    budget.record(Cause.TIMEOUT, decide(Cause.TIMEOUT, budget.load(), policy, "slurm", 0))
    assert budget.load()["timeout"] == 1 and budget.load()["refused"] == ""
    budget.record(Cause.CANCEL, Decision(Action.STOP, "cancelled"))  # nothing to count
    assert budget.load()["timeout"] == 1


@pytest.mark.parametrize("scheduler,action,code", [
    ("local", Action.REQUEUE, protocol.LOCAL_REQUEUE),
    ("local", Action.FOLLOW, protocol.CHECKPOINTED),
    ("local", Action.LEAVE, protocol.CHECKPOINTED),
    ("slurm", Action.LEAVE, protocol.CHECKPOINTED),
    ("slurm", Action.REQUEUE, protocol.CHECKPOINTED),
])
def test_carry_out_exits(scheduler, action, code):
    calls = []
    protocol.carry_out(Decision(action, "x"), scheduler, requeue_on_slurm=lambda: calls.append("requeue"),
                       exit_now=lambda c: calls.append(c), wait_to_be_ended=lambda: calls.append("wait"))
    assert calls[-1] == code
    assert ("requeue" in calls) == (scheduler == "slurm" and action is Action.REQUEUE)


def test_carry_out_follow_on_slurm_waits_and_stop_raises():
    calls = []
    protocol.carry_out(Decision(Action.FOLLOW, "x"), "slurm", requeue_on_slurm=lambda: calls.append("r"),
                       exit_now=calls.append, wait_to_be_ended=lambda: calls.append("wait"))
    assert calls == ["wait"]
    for action in (Action.STOP, Action.REFUSE):
        with pytest.raises(protocol.NotRequeued, match="why"):
            protocol.carry_out(Decision(action, "why"), "slurm", requeue_on_slurm=None, exit_now=None,
                               wait_to_be_ended=None)


@pytest.mark.parametrize("state,cause", [("PREEMPTED", Cause.PREEMPTION), ("TIMEOUT", Cause.TIMEOUT),
                                         ("NODE_FAIL", Cause.NODE_FAILURE), ("REQUEUED", Cause.NODE_FAILURE),
                                         (None, Cause.NODE_FAILURE), ("CANCELLED by 0", Cause.NODE_FAILURE)])
def test_slurms_own_requeue_is_a_node_failure_only_when_accounting_says_nothing_else(state, cause):
    assert protocol.requeue_cause(state) is cause


def test_a_requeue_signal_before_the_trainer_is_kept_and_sigterm_ends_the_rank():
    """catch_early: the requeue signal is kept for the trainer's first step boundary; SIGTERM
    has its default action (a rank with nothing trained yet ends at once)."""
    import os

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    protocol._early.clear()
    try:
        protocol.catch_early(signal.SIGUSR2)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert protocol.early_signal() is None
        os.kill(os.getpid(), signal.SIGUSR2)
        got = protocol.early_signal()
        assert got is not None and got[0] == signal.SIGUSR2
    finally:
        protocol._early.clear()
        for s, h in before.items():
            signal.signal(s, h)
