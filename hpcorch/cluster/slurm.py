"""Talking to Slurm through its own commands: submit, query, wait, update.

Every Slurm command line hpcorch runs (``sbatch``, ``squeue``, ``sacct``, ``scontrol``,
``scancel``, ``sinfo``, ``sacctmgr``) is written here, in a :class:`Slurm` method, and runs
through one subprocess wrapper (:meth:`Slurm._call`): one place to read what hpcorch asks
Slurm, one environment, one timeout, one error. Every call raises :class:`SlurmError` with
Slurm's own message.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from hpcorch.errors import HpcorchError

# At module level on purpose: time_left runs in submitit's checkpoint signal handler (see
# hpcorch.batch.task), where an import could meet half-imported modules.
from hpcorch.spec.units import expand_hostlist, parse_time

# States after which a job runs no more (unless requeued by hand). ENDED: the controller no
# longer holds the job and accounting cannot say how it ended (it is not pending or running:
# the controller would know it).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED", "ENDED"}
_FORGOTTEN = "Invalid job id specified"  # what scontrol and squeue say of a job they do not hold


class SlurmError(HpcorchError):
    pass


# Node state words that mean a job will not (or should not) run there.
UNHEALTHY_NODE_STATES = frozenset({"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "NOT_RESPONDING"})


@dataclass
class Slurm:
    """Slurm's commands with one environment (``SLURM_CONF`` picks the cluster)."""

    env: dict | None = None
    timeout_s: float = 60.0

    def _call(self, args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
        """The one subprocess call: ``env`` over this process's environment, ``timeout_s``,
        no terminal input (a command that would prompt gets end of file, not a hang)."""
        env = {**os.environ, **(self.env or {})}
        stdin = None if input is not None else subprocess.DEVNULL
        try:
            return subprocess.run(args, input=input, stdin=stdin, env=env, capture_output=True, text=True,
                                  timeout=self.timeout_s)
        except FileNotFoundError:
            raise SlurmError(f"{args[0]}: not found; run this on a login node with Slurm's "
                             "commands on PATH") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{' '.join(args)}: no answer in {self.timeout_s:.0f} s") from None

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run a Slurm command; its stdout. ``check``: raise with Slurm's message on failure."""
        proc = self._call(list(args), input)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def ask(self, *args: str) -> str:
        """Run a Slurm command as a :data:`hpcorch.cluster.live.Runner`: its stdout, or a
        one-line :class:`SlurmError` naming the whole command, its exit code and the first
        line Slurm said (``profile discover`` shows it as the command's error)."""
        proc = self._call(list(args))
        if proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip() or "no message").splitlines()[0]
            raise SlurmError(f"{' '.join(args)} failed (exit {proc.returncode}): {message}")
        return proc.stdout

    def test_only(self, script: str, *options: str) -> str:
        """``sbatch --test-only``: validate against the running cluster without submitting.
        Returns Slurm's message (on stderr, even on success)."""
        proc = self._call(["sbatch", "--test-only", *options], input=script)
        if proc.returncode != 0:
            raise SlurmError(f"sbatch --test-only rejected the script: {proc.stderr.strip()}")
        return proc.stderr.strip()

    def queue(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """(state, reason) of each job the controller still holds, finished ones included (for
        MinJobAge), from one squeue call. A job missing from the answer is not held; raise if
        the controller cannot be asked."""
        # -r: an array task (A_i) is a line of its own, pending ones too.
        proc = self._call(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(job_ids)])
        if proc.returncode != 0 and _FORGOTTEN not in proc.stderr:
            raise SlurmError(f"squeue failed: {proc.stderr.strip()}")
        held = {}
        for line in proc.stdout.splitlines():
            job_id, state, reason = (line.split("|") + ["", ""])[:3]
            held[job_id] = (state, reason)
        return held

    def show(self, kind: str, name: str) -> dict[str, str]:
        """``scontrol show KIND NAME`` as a dict (empty if Slurm does not know it)."""
        out = self.run("scontrol", "show", kind, "--oneliner", name, check=False)
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (empty once Slurm has forgotten the job)."""
        return self.show("job", job_id)

    def states(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """(state, reason) of each job: the controller's while it holds the job, else
        accounting's, else ENDED (not held by the controller: not pending, not running).
        One squeue call, and one sacct call for the jobs the controller no longer holds.
        Raise if the controller cannot be asked."""
        held = self.queue(job_ids)
        try:
            accounted = self.sacct_states([j for j in job_ids if j not in held])
        except SlurmError:
            accounted = {}  # no accounting: what the controller does not hold has ended
        return {j: held.get(j) or (accounted.get(j, "ENDED"), "") for j in job_ids}

    def state(self, job_id: str) -> str:
        """The job's state, as :meth:`states` decides it."""
        return self.states([job_id])[job_id][0]

    def sacct_states(self, job_ids: list[str]) -> dict[str, str]:
        """States of many jobs in one sacct call (allocations only, not steps)."""
        if not job_ids:
            return {}
        out = self.run("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids))
        states = {}
        for line in out.splitlines():
            job_id, _, state = line.partition("|")
            states[job_id] = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        return states

    ATTEMPT_FIELDS = ("JobID", "State", "Submit", "Eligible", "Start", "End", "ElapsedRaw", "AllocTRES", "NodeList")

    def attempts(self, job_ids: list[str]) -> dict[str, list[dict[str, str]]]:
        """Every run of each job, requeues included (``sacct -D``: a requeued job keeps its id
        and only its latest run shows without it), oldest first, as {field: text} with
        :data:`ATTEMPT_FIELDS`. One sacct call; raises :class:`SlurmError` when accounting is
        off (no slurmdbd)."""
        if not job_ids:
            return {}
        out = self.run("sacct", "-D", "-X", "-n", "-P", "--format=" + ",".join(self.ATTEMPT_FIELDS),
                       "-j", ",".join(job_ids))
        runs: dict[str, list[dict[str, str]]] = {j: [] for j in job_ids}
        for line in out.splitlines():
            values = line.split("|")
            if len(values) != len(self.ATTEMPT_FIELDS):
                continue
            row = dict(zip(self.ATTEMPT_FIELDS, values, strict=True))
            runs.setdefault(row["JobID"], []).append(row)
        for rows in runs.values():
            rows.sort(key=lambda r: r["Submit"])  # ISO times: text order is time order
        return runs

    def node_flags(self, node: str) -> set[str]:
        """Every word of the node's state as the controller holds it (``DOWN+COMPLETING`` ->
        {"DOWN", "COMPLETING"}); sinfo shows only one of them."""
        state = self.show("node", node).get("State", "")
        return set(state.rstrip("*~#$@").replace("*", "").split("+")) if state else set()

    def node_unhealthy(self, node: str) -> bool:
        """Whether the controller holds ``node`` down, drained or failing (a job should avoid it)."""
        return bool(self.node_flags(node) & UNHEALTHY_NODE_STATES)

    def unhealthy_among(self, nodes: str) -> list[str]:
        """The nodes of host list ``nodes`` that the controller holds down, drained or failing:
        one sinfo call however many nodes (empty when Slurm cannot say)."""
        out = self.run("sinfo", "-h", "-N", "-n", nodes, "-t", "down,drain,fail,no_respond", "-o", "%N",
                       check=False)
        return sorted(set(out.split()))

    def nodes_used(self, job_id: str) -> set[str]:
        """Every node that ran the job, in any of its runs (requeues included): accounting's
        (``sacct --duplicates``) and the controller's latest (accounting may lag it). Empty
        when neither knows (the job never started, or both are silent)."""
        out = self.run("sacct", "-j", job_id, "--duplicates", "-X", "-n", "-P", "-o", "NodeList", check=False)
        latest = self.job(job_id).get("NodeList", "")
        used: set[str] = set()
        for nodes in out.split() + [latest]:
            if nodes and nodes not in ("None", "(null)"):
                used.update(expand_hostlist(nodes))
        return used

    def time_left(self, job_id: str) -> int | None:
        """Seconds until the job's time limit (``squeue %L``); None when Slurm does not say
        (no limit, the job unknown, an answer that is no time)."""
        out = self.run("squeue", "-h", "-j", job_id, "-o", "%L", check=False).strip()
        try:
            return parse_time(out) if out and out not in ("INVALID", "NOT_SET") else None
        except ValueError:
            return None

    def requeue(self, job_id: str) -> None:
        """``scontrol requeue``: the job ends now (its processes get SIGTERM) and pends again."""
        self.run("scontrol", "requeue", job_id)

    def exclude_nodes(self, job_id: str, nodes: str) -> None:
        """Set a pending job's ``ExcNodeList`` (a compressed host list; it replaces the old
        one). Slurm refuses it for a running job."""
        self.run("scontrol", "update", f"JobId={job_id}", f"ExcNodeList={nodes}")

    def start_now(self, job_id: str, check: bool = False) -> None:
        """``StartTime=now``: cut the ~120 s ``BeginTime`` hold Slurm puts on a requeued job.
        Unchecked by default: the user may not be allowed to, and then the hold just stays."""
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=check)

    def sbatch(self, script: str) -> str:
        """Submit ``script`` (on stdin); the job id (an array's own id ``A``), from ``--parsable``
        (``ID`` or ``ID;cluster``)."""
        out = self.run("sbatch", "--parsable", input=script).strip()
        return out.split(";")[0]

    def max_array_size(self) -> int:
        """``MaxArraySize`` of the cluster (an array's indices stay below it); Slurm's default 1001
        when the controller does not say."""
        out = self.run("scontrol", "show", "config", check=False)
        found = re.search(r"^MaxArraySize\s*=\s*(\d+)\s*$", out, re.MULTILINE)
        return int(found[1]) if found and int(found[1]) > 0 else 1001

    def array_tasks(self, array_id: str) -> dict[str, str]:
        """Each task of array ``array_id`` the controller holds, as ``{"A_i": state}``
        (``squeue -r``: one line per task, pending ones too)."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i|%T", check=False)
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    def release(self, job_id: str) -> None:
        """Let a held job (``sbatch --hold``; every task of a held array) be scheduled."""
        self.run("scontrol", "release", job_id)

    def array_throttle(self, array_id: str, running: int) -> None:
        """Change how many tasks of array ``array_id`` may run at once (0: no limit)."""
        self.run("scontrol", "update", f"JobId={array_id}", f"ArrayTaskThrottle={running}")

    def version(self, timeout_s: float = 1.0) -> str | None:
        """``sinfo --version`` (``slurm 24.05.4`` -> ``24.05.4``) where Slurm is installed;
        None without it, or without an answer within ``timeout_s`` (a manifest waits no longer)."""
        if shutil.which("sinfo", path=(self.env or {}).get("PATH")) is None:
            return None
        try:
            out = Slurm(self.env, timeout_s).run("sinfo", "--version", check=False)
        except (SlurmError, OSError):  # an unreadable binary too: a manifest records None, never fails
            return None
        return out.strip().removeprefix("slurm ").strip() or None

    def cancel(self, job_id: str, signal: str | None = None, batch_only: bool = False) -> None:
        args = ["scancel"]
        if signal:
            args.append(f"--signal={signal}")
        if batch_only:
            args.append("--batch")
        self.run(*args, job_id)


def shrink_command(job_id: str, nodes: str) -> list[str]:
    """The words that shrink a running job to ``nodes`` nodes, handing the others back:
    ``scontrol update JobId=ID NumNodes=N``. Slurm then writes ``slurm_job_ID_resize.sh`` in
    the current folder, which sets the ``SLURM_*`` node variables of the smaller allocation.
    The batch script of a node range runs it (``job_id`` and ``nodes`` as shell variables)."""
    return ["scontrol", "update", f"JobId={job_id}", f"NumNodes={nodes}"]


def job_ref(environ: dict) -> str:
    """The id that names this allocation alone to ``scontrol``/``scancel``: ``A_i`` for an array
    task, else ``SLURM_JOB_ID``. One task of every array has ``SLURM_JOB_ID`` equal to the
    array's own id ``A``, and ``scontrol requeue A`` requeues *every* task of the array."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ["SLURM_JOB_ID"]
