"""The batch script's answer to a failed step: keep the bad node out and come back, or stop
and say why. ``python -m hpcorch.batch.recovery`` runs on the batch host after the pre-flight step or
the training step failed (``srun ... || exec python -m hpcorch.batch.recovery ...``).

1. **Classify** the failure (:mod:`hpcorch.batch.failure`): which node failed first, at which step.
2. **Record** it: ``failures.jsonl`` and an event in the run directory.
3. **Stop** without burning the budget when retrying cannot help: a rank's own clear error (a
   config or checkpoint problem), a pre-flight every node failed alike (a floor or the fabric,
   not a node), or a crash loop (the same failure at the same step ``requeue.crash_loop``
   times in a row), and when ``requeue.max_node_failures`` is spent.
4. **Quarantine** the culprit nodes in the registry (hard evidence: killed first, down,
   failed pre-flight; an error exit only when the same node failed the attempt before too).
5. **Requeue in place without them**: ``scontrol requeue``, then ``ExcNodeList`` while the
   job completes (Slurm refuses it for a running job, accepts it once the requeue made the
   job pending; this process is one of the job's, so the job stays completing until it is
   done, and it ignores the requeue's SIGTERM), then ``StartTime=now`` (a requeued job is
   otherwise held about two minutes). The next attempt resumes from the last committed
   checkpoint as any requeued attempt does.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from hpcorch import protocol
from hpcorch.batch.failure import (
    Failure,
    classify_preflight,
    classify_training,
    exit_records,
    interpreter_failure,
    scheduler_stop,
    srun_ends,
)
from hpcorch.cluster.slurm import FINAL_STATES, Slurm, SlurmError, job_ref
from hpcorch.errors import HpcorchError
from hpcorch.protocol import Action, Cause, Decision, RestartBudget
from hpcorch.spec.job import load_job
from hpcorch.spec.units import compress_hostlist, expand_hostlist
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import read_json
from hpcorch.util.poll import PollTimeout, poll_until

log = logging.getLogger("hpcorch.batch.recovery")

ERR_TAIL_BYTES = 256 * 1024


def main(argv: list[str] | None = None) -> int:
    # Our own requeue signals every process of the job; this one must finish its update first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if argv is None and sys.argv[1:2] == ["--watch-requeue"]:  # the batch shell's SIGTERM trap
        return 0 if watch_for_slurms_requeue(RunDir(sys.argv[2])) else 1
    if argv is None and sys.argv[1:2] == ["--start-when-pending"]:
        after = int(sys.argv[3]) if len(sys.argv) > 3 else None
        return _start_when_pending(sys.argv[2], after_attempt=after,
                                   patience_s=WATCH_PATIENCE_S if after is not None else 120.0)
    parser = argparse.ArgumentParser(prog="python -m hpcorch.batch.recovery", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--stage", choices=("preflight", "train"), required=True)
    parser.add_argument("--exit-code", type=int, required=True, help="the failed step's exit code")
    parser.add_argument("--profile", required=True, help="the profile's name (quarantine is per profile)")
    parser.add_argument("--quarantine-hours", type=float, default=24.0)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="hpcorch: %(message)s")
    try:
        Recovery(RunDir.open(args.run_dir), args.profile, args.quarantine_hours).after(args.stage, args.exit_code)
    except (HpcorchError, OSError) as exc:
        log.error("recovery after the failed %s step could not finish: %s", args.stage, exc)
    return args.exit_code


class Recovery:
    """One failed attempt of one job, on its batch host (Slurm's environment says which)."""

    def __init__(self, run: RunDir, profile: str, quarantine_hours: float, slurm: Slurm | None = None,
                 environ: dict | None = None):
        env = os.environ if environ is None else environ
        self.run, self.profile, self.hours = run, profile, quarantine_hours
        self.job = load_job(run.job_file)
        # scontrol acts on job_id: the array task A_i, never the array's id (see job_ref); the
        # batch script's own log is named by the allocation's raw id (%j).
        self.job_id, self.batch_id = job_ref(env), env["SLURM_JOB_ID"]
        self.attempt = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        self.allocated = expand_hostlist(env.get("SLURM_JOB_NODELIST", ""))
        self.slurm = slurm or Slurm()

    def after(self, stage: str, exit_code: int = 1) -> Failure:
        """Classify the failed ``stage``, then stop or requeue without the culprit nodes."""
        failure = self.classify(stage)
        # The launch is wrong (srun's own exit 2 when it cannot execve the interpreter): not a
        # node, not a floor; stop without quarantine.
        why = self._no_interpreter(exit_code) if stage == "preflight" else None
        if why:
            failure.clear_error, failure.nodes, failure.what = True, [], why
        elif stage == "preflight" and exit_code == protocol.CLEAR_ERROR:  # its options, not a node
            failure.clear_error, failure.nodes = True, []
            said = [ln for ln in _tail(self.run.batch_log("err", self.batch_id)).splitlines()
                    if ln.startswith("error: python -m hpcorch.batch.health: ")]
            failure.what = (said[-1].removeprefix("error: python -m hpcorch.batch.health: ") if said else
                            f"the pre-flight step could not start its checks (exit {exit_code}); see the batch log")
        if failure.protocol_stop:
            return failure
        if failure.signalled:
            return self._signalled(failure)
        when = "before training" if failure.step is None else f"at step {failure.step}"
        log.error("%s step failed %s: %s", stage, when, failure.what)
        self._record(failure)
        # A bad node stays out of later jobs whether or not this one comes back.
        history = self._history()  # this failure included
        held = [] if failure.clear_error or failure.evidence == "unattributable" else \
            self._quarantine(failure, history)
        decision = self._decide(failure, held, history)
        if decision.action is not Action.REQUEUE:
            RestartBudget(self.run).record(Cause.NODE_FAILURE, Decision(Action.REFUSE, decision.reason))
            log.error("not requeued: %s", decision.reason)
            return failure
        RestartBudget(self.run).record(Cause.NODE_FAILURE, decision)
        requeue_without(self.slurm, self.job_id, held)
        log.info("requeued (%s)%s; the next attempt resumes from step %s", decision.reason,
                 f" without {compress_hostlist(held)}" if held else "", self.run.latest_checkpoint() or 0)
        return failure

    def _signalled(self, failure: Failure) -> Failure:
        """The requeue signal came before a handler: a preemption (or the time limit) all the
        same, requeued within that budget, never a node failure; no node is blamed."""
        policy, budget = self.job.requeue, RestartBudget(self.run)
        cause = protocol.classify(policy.signum, policy, self.slurm.time_left(self.job_id))
        decision = protocol.decide(cause, budget.load(), policy, "slurm", 0)
        budget.record(cause, decision)
        log.info("%s step stopped by the scheduler (%s): %s", failure.stage, failure.what, decision.reason)
        if decision.action is Action.REQUEUE:
            requeue_without(self.slurm, self.job_id, [])
        return failure

    def _decide(self, failure: Failure, held: list[str], history: list[dict]) -> Decision:
        """Requeue within the node-failure budget, unless retrying cannot help or the job
        could not start again without ``held``."""
        stop = self._why_stop(failure, history)
        if stop:
            return Decision(Action.REFUSE, stop)
        decision = protocol.decide(Cause.NODE_FAILURE, RestartBudget(self.run).load(), self.job.requeue, "slurm", 0)
        short = self._too_few_nodes_without(held) if decision.action is Action.REQUEUE else None
        return Decision(Action.REFUSE, short) if short else decision

    # ----- evidence ------------------------------------------------------------------------
    def _no_interpreter(self, exit_code: int) -> str | None:
        """Why the pre-flight never ran its checks anywhere, if its interpreter did not start."""
        reports = {n: read_json(self.run.health_report(self.attempt, n)) or None for n in self.allocated}
        return interpreter_failure(reports, _tail(self.run.batch_log("err", self.batch_id)), exit_code)

    def classify(self, stage: str) -> Failure:
        done = self.run.progress().get("step")
        step = None if done is None else done + 1  # the step being trained when it failed
        ends, srun_failed = srun_ends(_tail(self.run.batch_log("err", self.batch_id)), stage)
        stopped = scheduler_stop(ends, stage, step, self.job.requeue.signum)
        if stopped is not None:
            return stopped
        if stage == "preflight":
            reports = {n: read_json(self.run.health_report(self.attempt, n)) or None for n in self.allocated}
            return classify_preflight(reports, step)
        records = exit_records(self.run.exit_record(self.attempt, 0).parent)
        down = [n for n in self.allocated if self.slurm.node_unhealthy(n)]
        failure = classify_training(ends, srun_failed, records, down, step)
        failure.lines = self._last_lines(failure, records)
        return failure

    def _last_lines(self, failure: Failure, records: list[dict], count: int = 6) -> list[str]:
        """The culprit rank's last log lines (its traceback, for an error), without submitit's own."""
        ranks = [r["rank"] for r in records if r.get("node") in failure.nodes]
        if not ranks:
            return []
        pattern = self.run.rank_log_pattern("err").replace("%j", self.job_id).replace("%t", str(ranks[0]))
        lines = [ln for ln in _tail(pattern, 16384).splitlines()
                 if ln.strip() and not ln.startswith(("submitit ", "slurmstepd"))]
        return lines[-count:]

    # ----- decisions -----------------------------------------------------------------------
    def _history(self) -> list[dict]:
        try:
            text = self.run.failures.read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]

    def _why_stop(self, failure: Failure, history: list[dict]) -> str | None:
        """Why retrying cannot help, or None."""
        if failure.clear_error:
            return f"a rank stopped with a clear error ({failure.what}); fix it and resume"
        if failure.evidence == "unattributable":
            return (f"pre-flight failed on every node alike ({failure.what}): a profile floor or the "
                    f"fabric, not one node; fix the profile's health floors, or set health.preflight: false")
        return crash_loop(history, self.job.requeue.crash_loop)

    def _quarantine(self, failure: Failure, history: list[dict]) -> list[str]:
        """Quarantine the culprits the evidence convicts; returns every node to exclude."""
        from hpcorch.state.registry import Registry

        convicted = list(failure.nodes) if failure.evidence == "hard" else []
        if failure.evidence == "soft" and len(history) >= 2 and set(history[-2].get("nodes", [])) & set(failure.nodes):
            convicted = list(failure.nodes)  # the same node failed the job twice in a row
        registry = Registry()
        for node in convicted:
            registry.quarantine(self.profile, node, f"{failure.stage}: {failure.what}", self.hours, self.job_id)
        held = {q.node for q in registry.quarantined(self.profile)}
        return sorted(set(convicted) | (held & set(self.allocated)))

    def _too_few_nodes_without(self, held: list[str]) -> str | None:
        """Why the job could never start again without ``held`` (and what it excludes already):
        a requeued job that no allocation can satisfy would pend forever."""
        info = self.slurm.job(self.job_id)
        current = info.get("ExcNodeList", "")
        excluded = set(held) | (set(expand_hostlist(current)) if current not in ("", "(null)") else set())
        partition = self.slurm.show("partition", info.get("Partition", "")).get("Nodes", "")
        if not partition or partition == "(null)":
            return None  # cannot tell: let Slurm judge
        left = [n for n in expand_hostlist(partition) if n not in excluded]
        res = self.job.resources
        need = res.nodes_min  # a node range starts on its fewest
        if len(left) >= need:
            return None
        return (f"without {compress_hostlist(sorted(excluded))} partition {info.get('Partition')} has "
                f"{len(left)} of the {need} nodes this job needs"
                f"{f' at least (resources.nodes {res.nodes_directive})' if res.is_range else ''}; release a node "
                f"(hpcorch nodes clear NODE) and resume")

    def _record(self, failure: Failure) -> None:
        record = failure.record(self.attempt, self.job_id)
        with open(self.run.failures, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.run.append_event("failure", durable=True, **{k: v for k, v in record.items() if k != "lines"})


def crash_loop(history: list[dict], times: int) -> str | None:
    """The stop message when the last ``times`` failures are the same failure at the same step."""
    if times < 1 or len(history) < times:
        return None
    last = history[-times:]
    if len({f.get("signature") for f in last}) != 1:
        return None
    f = last[-1]
    nodes = ", ".join(dict.fromkeys(n for x in last for n in x.get("nodes", []))) or "unknown nodes"
    lines = " | ".join(f.get("lines", [])[-3:])
    return (f"crash loop: the same failure at step {f.get('step')} {times} times in a row (on {nodes}): "
            f"{f.get('what')}" + (f"; last lines: {lines}" if lines else ""))


def requeue_without(slurm: Slurm, job_id: str, nodes: list[str], patience_s: float = 20.0) -> None:
    """Requeue the job, exclude ``nodes`` from its next start, and let it start at once."""
    try:
        slurm.requeue(job_id)
    except SlurmError as exc:
        # Slurm may have requeued it already (a node it marked down); anything else is final.
        if slurm.job(job_id).get("JobState") not in ("PENDING", "REQUEUED", "REQUEUE_FED", "COMPLETING"):
            raise
        log.info("Slurm requeued the job itself (%s)", exc)
    if nodes:
        current = slurm.job(job_id).get("ExcNodeList", "")
        hosts = set(nodes) | (set(expand_hostlist(current)) if current not in ("", "(null)") else set())
        _exclude_once_pending(slurm, job_id, compress_hostlist(sorted(hosts)), patience_s)
    start_when_pending(job_id)


def _exclude_once_pending(slurm: Slurm, job_id: str, hosts: str, patience_s: float) -> None:
    """Set ``ExcNodeList``, retrying while Slurm refuses it because the requeue is still being
    carried out (the job not pending yet); after ``patience_s`` Slurm's refusal is raised."""
    refused: list[SlurmError] = []

    def excluded() -> bool:
        try:
            slurm.exclude_nodes(job_id, hosts)
            return True
        except SlurmError as exc:
            refused[:] = [exc]
            return False

    try:
        poll_until(excluded, patience_s, interval_s=0.3)
    except PollTimeout:
        raise refused[-1] from None


HOLD_ENV = "HPCORCH_REQUEUE_HOLD"  # "keep": leave Slurm's hold after our requeues (benchmarks compare)
# How long a watcher left by a failed rank waits for Slurm to requeue the job: Slurm takes a
# dead node down only after SlurmdTimeout (300 s by default), and then requeues the job.
WATCH_PATIENCE_S = 600.0


def keeps_hold(value: str | None = None) -> bool:
    """Whether ``value`` of :data:`HOLD_ENV` (default: this process's environment) keeps
    Slurm's hold on requeued jobs."""
    value = os.environ.get(HOLD_ENV, "") if value is None else value
    return str(value).strip().lower() == "keep"


def start_when_pending(job_id: str, after_attempt: int | None = None, once: Path | None = None) -> bool:
    """Cut the hold Slurm puts on a requeued job (``BeginTime``, about two minutes) once the
    job is pending: only then does ``StartTime=now`` stick, and the job stays completing while
    this process (one of its own) lives. So a detached process does it after we are gone. On
    sites whose process tracking is a cgroup it ends with the job, and the hold stays; where
    the user may not update the job, Slurm refuses and the hold stays too (nothing fails).
    ``HPCORCH_REQUEUE_HOLD=keep`` leaves the hold (to measure what the cut gains).

    With ``after_attempt`` the helper waits (up to :data:`WATCH_PATIENCE_S`) for a requeue that
    Slurm has not made yet (the job's restart count above that attempt's), and gives up when
    the job ends instead; ``once`` is a marker file that only its first creator gets to start
    the helper with (every rank of an attempt may ask). Returns whether the helper was started."""
    import subprocess

    if keeps_hold():
        log.info("%s=keep: Slurm's hold on the requeued job stays", HOLD_ENV)
        return False
    if once is not None and not _first_to_create(once):
        return False
    argv = [sys.executable, "-m", "hpcorch.batch.recovery", "--start-when-pending", job_id]
    if after_attempt is not None:
        argv.append(str(after_attempt))
    # The requeue SIGTERMs the job's processes, maybe while the helper is still starting (before
    # its own handler): an ignored signal is inherited through exec, so it is ignored from birth.
    previous = _ignore_sigterm()
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


def watch_for_slurms_requeue(run: RunDir, environ: dict | None = None) -> bool:
    """A rank of a Slurm job that failed, or that Slurm's SIGTERM ended, leaves a watcher that
    cuts the hold if Slurm requeues the job by itself: when the batch host failed outright, no
    recovery step of ours runs there, and the ranks on the other nodes are the only ones left to
    see it. One watcher per attempt, whichever rank comes first (``exits/attempt-N/hold-watch``);
    it ends as soon as the job ends without a requeue."""
    env = os.environ if environ is None else environ
    if not env.get("SLURM_JOB_ID"):
        return False
    attempt = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    try:
        return start_when_pending(job_ref(env), after_attempt=attempt,
                                  once=run.exit_record(attempt, 0).parent / "hold-watch")
    except OSError as exc:  # on a failure path: never hide the failure being reported
        log.warning("hpcorch: no watcher for Slurm's requeue hold: %s", exc)
        return False


def _first_to_create(marker: Path) -> bool:
    """Create ``marker``; False if it exists already (another process created it first)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def _ignore_sigterm():
    """Ignore SIGTERM in this process; the previous handler (None off the main thread, where
    handlers cannot change: the helper then installs its own a moment later)."""
    try:
        return signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:
        return None


def _start_when_pending(job_id: str, after_attempt: int | None = None, patience_s: float = 120.0,
                        slurm: Slurm | None = None) -> int:
    """The helper's body: wait until the job is held for ``BeginTime`` after a requeue (after
    ``after_attempt``, if given), then let it start now. Exit 1 if it never was (the job ended,
    or the patience ran out)."""
    slurm = slurm or Slurm()

    def held_for_begin_time() -> bool | None:
        info = slurm.job(job_id)
        state = info.get("JobState", "")
        if after_attempt is not None and int(info.get("Restarts", "0") or 0) <= after_attempt:
            if not info or state in FINAL_STATES:  # ended, and not requeued: nothing to watch for
                raise PollTimeout(f"job {job_id} ended ({state or 'forgotten'}) without a requeue")
            return None
        return (state == "PENDING" and info.get("Reason") == "BeginTime") or None

    try:
        poll_until(held_for_begin_time, patience_s, interval_s=0.5 if after_attempt is None else 1.0)
    except (PollTimeout, SlurmError):
        return 1
    # slurmd refuses a credential made in the same second as the revoked one ("Job
    # credential revoked", and the job fails): the hold exists for that; two seconds suffice.
    time.sleep(2.0)
    slurm.start_now(job_id)
    return 0


def lift_requeue_hold(slurm: Slurm, job_id: str, settle_s: float = 3.0) -> bool:
    """The client's side of the hold, for sites where nothing started inside the job outlives
    it (process tracking by cgroup ends every watcher with the job): any hpcorch command that
    finds the job requeued (restart count above 0) and waiting out ``BeginTime`` lets it start
    now, unless ``HPCORCH_REQUEUE_HOLD=keep``, and not within ``settle_s`` of the requeue (see
    :func:`_start_when_pending`). Slurm refuses a user who may not update the job; the hold
    then stays. Returns whether the hold was cut."""
    from datetime import datetime

    if keeps_hold():
        return False
    info = slurm.job(job_id)
    if (info.get("JobState"), info.get("Reason")) != ("PENDING", "BeginTime") or \
            int(info.get("Restarts", "0") or 0) < 1:
        return False
    try:  # a requeue resets the job's submit time
        requeued = datetime.fromisoformat(info.get("SubmitTime", "")).timestamp()
    except ValueError:
        return False
    if time.time() - requeued < settle_s:
        return False
    slurm.start_now(job_id)
    log.info("job %s: Slurm's requeue hold cut", job_id)
    return True


def _tail(path, size: int = ERR_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
