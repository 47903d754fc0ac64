"""One node's whole pre-flight: local checks, then the all-reduce among the nodes, under one
hard deadline, ending in a report file in the run directory.

The deadline is a watchdog thread: when it fires, the node writes what it has with a failed
``deadline`` check and exits :data:`hpcorch.protocol.HEALTH_FAILED` at once, whatever the main
thread is stuck in (a hung file system, a peer that never joins, a GPU driver call).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from hpcorch.batch.health.checks import check_node, node_name
from hpcorch.batch.health.criteria import Criteria
from hpcorch.batch.health.report import Check, NodeReport
from hpcorch.protocol import DONE, HEALTH_FAILED
from hpcorch.state.rundir import RunDir

log = logging.getLogger(__name__)
# How long the watchdog waits for its own report write (the file system may be what hangs).
_WRITE_GRACE_S = 5.0
# The all-reduce gives up joining this long before the deadline, so its own error is reported.
_JOIN_MARGIN_S = 3.0


class Deadline:
    """Fires once, ``seconds`` after :meth:`start`, unless :meth:`settle` came first."""

    def __init__(self, seconds: float, report: NodeReport, path: Path | None):
        self.seconds, self.report, self.path = seconds, report, path
        self.phase = "starting"
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self.started = time.monotonic()

    def start(self) -> Deadline:
        self._timer.start()
        return self

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def settle(self) -> bool:
        """Stop the watchdog; False if it already fired (the process is exiting)."""
        with self._lock:
            if self._done:
                return False
            self._done = True
        self._timer.cancel()
        return True

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self.report.add(Check("deadline", False, f"timed out after {self.seconds:g} s during {self.phase}",
                              round(time.monotonic() - self.started, 3), self.seconds))
        self.report.finish()
        if self.path is not None:
            writer = threading.Thread(target=self.report.write, args=(self.path,), daemon=True)
            writer.start()
            writer.join(_WRITE_GRACE_S)
        log.error("%s", self.report.summary())
        logging.shutdown()
        os._exit(HEALTH_FAILED)


def run_preflight(criteria: Criteria, run_dir: str | os.PathLike | None, root: str | os.PathLike | None = None,
                  env: Mapping[str, str] | None = None, allreduce: bool = True, port: int | None = None,
                  addr: str | None = None) -> NodeReport:
    """Check this node, then (``allreduce`` and more than one task) the all-reduce; write the
    report to ``RunDir(run_dir).health_report(SLURM_RESTART_COUNT, node)`` when ``run_dir`` is
    given. Returns the report; its ``ok`` decides the exit code (:func:`exit_code`)."""
    env = os.environ if env is None else env
    attempt = int(env.get("SLURM_RESTART_COUNT") or 0)
    report = NodeReport(node=node_name(env), attempt=attempt, job_id=env.get("SLURM_JOB_ID"))
    path = RunDir(run_dir).health_report(attempt, report.node) if run_dir is not None else None
    deadline = Deadline(criteria.timeout_s, report, path).start()
    deadline.phase = "the local checks"
    check_node(criteria, run_dir, root, env, report)
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if allreduce and world > 1:
        deadline.phase = "the all-reduce"
        from hpcorch.batch.health.allreduce import exchange_and_measure, rendezvous

        try:
            rdv = rendezvous(env, port=port, addr=addr)
        except Exception as exc:  # no address for the first node: nothing to join
            report.add(Check("allreduce.join", False, f"no rendezvous: {exc}"))
        else:
            exchange_and_measure(criteria, rdv, report, deadline.left() - _JOIN_MARGIN_S)
    elif allreduce:
        report.notes.append("one node: all-reduce not measured")
    report.finish()
    if not deadline.settle():
        time.sleep(_WRITE_GRACE_S * 2)  # the watchdog is writing and exiting; let it
    if path is not None:
        report.write(path)
    return report


def exit_code(report: NodeReport) -> int:
    """0 for a healthy node, :data:`HEALTH_FAILED` (4) for a node that failed a check."""
    return DONE if report.ok else HEALTH_FAILED
