"""What failed when a step of the batch script failed, and on which node: the evidence and
the one classification :mod:`hpcorch.batch.recovery` acts on.

Evidence, all of it on disk or from srun, none of it needing the dead node:

* srun's own lines in the batch script's stderr (``srun: error: node2: tasks 2-3: Killed``),
  in the order srun learned of the ends: the first task to die is usually the first line;
* each rank's exit record (``RUN/exits/attempt-N/rank-R.json``), written by a rank that ended
  with an error it could see (a killed rank writes none: its silence is evidence too);
* the pre-flight reports (``RUN/health/attempt-N/NODE.json``);
* the controller's node states (a node Slurm marked down under the job).

A rank whose peer died fails too (gloo's "Connection closed by peer", NCCL's watchdog); those
are victims, not culprits. A task srun terminated itself (SIGTERM after ``--kill-on-bad-exit``)
is a victim too. What is left points at the node that failed first.
"""
from __future__ import annotations

import json
import re
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcorch import protocol
from hpcorch.protocol import PEER_LOST

# srun's report of tasks that ended badly: "srun: error: node2: tasks 2-3: Killed".
SRUN_END = re.compile(r"^srun: error: (?P<node>[^\s:]+): tasks? (?P<tasks>[\d,\-]+): (?P<what>.+?)\s*$")
SRUN_NODE_FAIL = re.compile(r"^srun: error: Node failure on (?P<node>\S+)")
# The marker the batch script writes to stderr right before the training step of an attempt.
TRAIN_MARKER = "hpcorch: training step starts"
# Deaths srun does not cause: a signal from the kernel (OOM killer), the driver or the hardware.
HARD_DEATHS = ("Killed", "Segmentation fault", "Bus error", "Aborted", "Illegal instruction",
               "Floating point exception")


@dataclass
class TaskEnd:
    """One srun line: tasks of one node and how they ended."""

    node: str
    tasks: str
    what: str

    @property
    def exit_code(self) -> int | None:
        found = re.match(r"Exited with exit code (\d+)", self.what)
        return int(found.group(1)) if found else None

    @property
    def hard(self) -> bool:
        return self.what.startswith(HARD_DEATHS)


@dataclass
class Failure:
    """A failed step, classified. ``nodes``: the nodes that failed first (the ones to keep out);
    ``evidence``: how they were singled out; ``signature``: the failure without its node, so
    that a crash loop on changing nodes is still one loop."""

    stage: str                      # "preflight" or "train"
    step: int | None                # the step being trained when it failed (None: before training)
    nodes: list[str] = field(default_factory=list)
    what: str = ""                  # one line for people
    evidence: str = ""              # hard (killed, node down, pre-flight) or soft (an error exit)
    clear_error: bool = False       # a rank's own clear error (config, checkpoint): never retried
    protocol_stop: bool = False     # the ranks checkpointed and the protocol acted already
    signalled: bool = False         # killed by the requeue signal before a handler: the scheduler's stop
    lines: list[str] = field(default_factory=list)  # the culprit's last error lines

    @property
    def signature(self) -> str:
        what = self.what
        for node in self.nodes:
            what = what.replace(node, "NODE")
        what = re.sub(r"rank \d+", "rank R", what)
        return f"{self.stage}@{self.step}: {what}"

    def record(self, attempt: int, job_id: str) -> dict:
        return {"attempt": attempt, "job_id": job_id, **asdict(self), "signature": self.signature}


def srun_ends(err_text: str, stage: str = "train") -> tuple[list[TaskEnd], list[str]]:
    """srun's task-end lines and its node-failure nodes in the text after the last training
    marker (this attempt's), in order; for the pre-flight step (before this attempt's marker),
    srun's own lines that end the text."""
    text = err_text.rsplit(TRAIN_MARKER, 1)[-1]
    if stage == "preflight":
        lines = text.splitlines()
        ours = len(lines)
        while ours and lines[ours - 1].startswith(("srun:", "slurmstepd")):
            ours -= 1
        text = "\n".join(lines[ours:])
    ends, failed = [], []
    for line in text.splitlines():
        if m := SRUN_END.match(line.strip()):
            ends.append(TaskEnd(m["node"], m["tasks"], m["what"]))
        elif m := SRUN_NODE_FAIL.match(line.strip()):
            failed.append(m["node"])
    return ends, failed


def killed_by(ends: list[TaskEnd], signum: int) -> list[TaskEnd]:
    """The task ends srun reports as deaths by ``signum`` (``User defined signal 2``)."""
    name = signal.strsignal(signum) or ""
    return [e for e in ends if name and e.what.startswith(name)]


def scheduler_stop(ends: list[TaskEnd], stage: str, step: int | None, requeue_signum: int) -> Failure | None:
    """The scheduler's stop signal, not a failure: a task killed by the job's requeue signal
    before it had a handler (the first second of a rank or of the pre-flight: a preemption or
    the time limit, ``signalled``), or every task ended by SIGTERM or checkpointed (Slurm ends
    the job itself: a cancel, a node set down). None when something else failed."""
    signalled = killed_by(ends, requeue_signum)
    if signalled:
        return Failure(stage, step, what=f"tasks {signalled[0].tasks} on {signalled[0].node}: "
                                         f"{signalled[0].what} before their handler", signalled=True)
    terminated = killed_by(ends, signal.SIGTERM)
    if terminated and all(e in terminated or e.exit_code == protocol.CHECKPOINTED for e in ends):
        return Failure(stage, step, what="the scheduler ended the tasks (SIGTERM)", protocol_stop=True)
    return None


def exit_records(folder: Path) -> list[dict]:
    """The ranks' exit records of one attempt, oldest first."""
    records = []
    for path in sorted(folder.glob("rank-*.json")) if folder.is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("time", 0))


def classify_training(ends: list[TaskEnd], srun_failed: list[str], records: list[dict], down: list[str],
                      step: int | None) -> Failure:
    """The training step's failure from srun's lines, the ranks' records and the nodes the
    controller reports down (``down``), most certain evidence first."""
    failure = Failure("train", step)
    if any(e.exit_code == protocol.CHECKPOINTED for e in ends):
        failure.protocol_stop, failure.what = True, "the ranks checkpointed and stopped (the protocol acted)"
        return failure
    clear = [r for r in records if r.get("exit_code") == protocol.CLEAR_ERROR]
    if clear:  # the one that said why first; a rank that printed its line itself records none
        first = next((r for r in clear if r.get("error")), clear[0])
        failure.clear_error, failure.nodes = True, []
        failure.what = (f"rank {first['rank']} on {first['node']}: "
                        f"{first.get('error') or 'a clear error (exit 2); its log has the line'}")
        return failure
    lost = sorted(dict.fromkeys(down + srun_failed))
    own = [r for r in records
           if not PEER_LOST.search(r.get("error", "")) and r.get("exit_code") != protocol.CHECKPOINTED]
    hard = _hard_deaths(ends, after_an_error_of_its_own=bool(own))
    if lost:
        failure.nodes, failure.evidence = lost, "hard"
        failure.what = f"node {', '.join(lost)} failed under the job (Slurm reports it down)"
    elif hard:
        first = hard[0]
        failure.nodes, failure.evidence = sorted(dict.fromkeys(e.node for e in hard if e.what == first.what)), "hard"
        failure.what = (f"tasks {first.tasks} on {first.node}: {first.what}{_likely_sender(first.what)} "
                        f"(died first; the other ranks lost it)")
    elif own:
        first = own[0]
        failure.nodes, failure.evidence = [first["node"]], "soft"
        reason = first["error"] or f"exit code {first['exit_code']}"
        failure.what = f"rank {first['rank']} on {first['node']}: {reason}"
    elif ends:
        bad = [e for e in ends if e.exit_code not in (None, 0)] or ends
        failure.what = f"tasks {bad[0].tasks} on {bad[0].node}: {bad[0].what}; no rank said why"
    else:
        failure.what = "the training step failed and no task end was reported"
    return failure


def _likely_sender(what: str) -> str:
    """`` by SIGKILL (the kernel's OOM killer, or a kill -9)`` for srun's ``Killed`` (its words
    are strsignal's), as ``hpcorch train`` says it; empty for a death it does not name."""
    for signum in protocol.LIKELY_SENDER:
        name = signal.strsignal(signum) or ""
        if name and what.startswith(name):
            return f" by {protocol.killed_by_text(signum)}"
    return ""


def _hard_deaths(ends: list[TaskEnd], after_an_error_of_its_own: bool) -> list[TaskEnd]:
    """The task ends that convict their node. Once a rank exited with an error of its own,
    srun terminates the step and kills what has not ended after KillWait (slow ranks of a
    loaded machine): deaths srun reports after that first error exit are its doing, not a cause."""
    if after_an_error_of_its_own:
        first_error = next((i for i, e in enumerate(ends) if e.exit_code not in (None, 0)), len(ends))
        ends = ends[:first_error]
    return [e for e in ends if e.hard]


def classify_preflight(reports: dict[str, dict | None], step: int | None) -> Failure:
    """The pre-flight's failure from each allocated node's report (None: the node wrote none,
    so it died or ran out of time). A node that failed only the collective part (its peers'
    all-reduce, or waiting for a peer that never came) is a victim when another node failed on
    its own; when every node failed only collectively (a bandwidth floor nobody reaches), no
    node can be blamed."""
    failure = Failure("preflight", step, evidence="hard")
    own: dict[str, str] = {}
    collective: dict[str, str] = {}
    names: dict[str, set[str]] = {}  # each failed node's failed checks
    for node, report in reports.items():
        if report is None:
            own[node], names[node] = "no report (the node died or the check ran out of time)", {"no report"}
            continue
        failed = [c for c in report.get("checks", []) if not c.get("ok", True)]
        if report.get("ok", False) or not failed:
            continue
        why = "; ".join(f"{c.get('name')}: {c.get('detail', '')}" for c in failed)
        (own if any(not _collective(c) for c in failed) else collective)[node] = why
        names[node] = {str(c.get("name")) for c in failed}
    bad = own or collective
    failure.nodes = sorted(bad)
    failure.what = "; ".join(f"{node}: {why}" for node, why in sorted(bad.items())) or "no node failed"
    everyone = len(reports) > 1 and len(names) == len(reports)
    if (not own and collective and len(reports) > 1) or (everyone and set.intersection(*names.values())):
        # The same check failed on every node: a shared cause (a full shared file system, a
        # floor nobody reaches), not a node to route around.
        failure.evidence = "unattributable"
    return failure


# What the batch log shows when the step's interpreter never ran the check: the launcher could
# not execute it, or it ran without hpcorch (a container's or a bare host's python).
_NO_INTERPRETER = re.compile(r"execve\(\)|command not found|No module named '?hpcorch|"
                             r"ModuleNotFoundError|can't open file|cannot execute|exec format error", re.I)


def interpreter_failure(reports: dict[str, dict | None], err_tail: str, exit_code: int) -> str | None:
    """Why the pre-flight never started, when no node wrote a report and the batch log (or the
    exit status: 126/127 are the shell's "cannot execute"/"not found") shows the interpreter did
    not start or could not import hpcorch; None otherwise. Not a node and not a floor."""
    if not reports or any(r is not None for r in reports.values()):
        return None
    lines = [ln.strip() for ln in err_tail.splitlines() if _NO_INTERPRETER.search(ln)]
    if not lines and exit_code not in (126, 127):
        return None
    seen = f": {lines[-1][:200]}" if lines else f" (exit {exit_code})"
    return (f"the pre-flight's interpreter did not start or could not import hpcorch on any node{seen}; "
            f"check launch.python and launch.wrapper (the pre-flight runs where the ranks run)")


def _collective(check: dict) -> bool:
    """A check every node fails together when one peer is slow or gone."""
    name, detail = str(check.get("name", "")), str(check.get("detail", ""))
    return name.startswith("allreduce.") or (name == "deadline" and "allreduce" in detail)
