"""A fake of Slurm's commands for unit tests: ``sbatch``, ``squeue``, ``sacct``, ``scontrol``,
``scancel``, ``sinfo`` and ``sacctmgr`` as small Python scripts on a PATH of their own, which
answer from a JSON state the test sets (jobs, nodes, recorded outputs) and record every call.

It tests what hpcorch asks and how it reads the answers, in milliseconds and without a
cluster; it is no Slurm. The real dev-cluster tests (``-m slurm``) stay the judge of whether
the command lines work on Slurm itself.

    fake = FakeSlurm(tmp_path)
    fake.job("7", "RUNNING", nodes="node[1-2]")
    fake.node("node2", "DOWN")
    monkeypatch.setenv("PATH", fake.path)    # or run a subprocess with env=fake.env
    ...
    assert ["scancel", "7"] in fake.calls()
"""
from __future__ import annotations

import fnmatch
import json
import os
import stat
import sys
from pathlib import Path

COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo", "sacctmgr")

# The shim: one script for every command (it reads its own name), standard library only.
SHIM = r'''#!{python}
import fnmatch, json, os, sys

STATE = {state!r}
CALLS = {calls!r}
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(CALLS, "a") as f:
    f.write(json.dumps([name] + args) + "\n")
with open(STATE) as f:
    s = json.load(f)


def save():
    with open(STATE, "w") as f:
        json.dump(s, f)


def fail(message, code=1):
    sys.stderr.write(message + "\n")
    sys.exit(code)


def value(flag, default=""):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return default


line = " ".join([name] + args)
for pattern, out, err, code in s["answers"]:
    if fnmatch.fnmatchcase(line, pattern):
        sys.stdout.write(out)
        sys.stderr.write(err)
        sys.exit(code)
jobs, nodes = s["jobs"], s["nodes"]
ids = [j for j in value("-j").split(",") if j]

if name == "squeue":
    if s["controller_down"]:
        fail("squeue: error: Unable to contact slurm controller (connect failure)")
    if "%L" in args:
        print(jobs.get(ids[0], {{}}).get("time_left", "INVALID"))
        sys.exit(0)
    for j in ids:
        job = jobs.get(j)
        if job and job["held"]:
            print("|".join([j, job["state"], job["reason"]]))
elif name == "sacct":
    if not s["accounting"]:
        fail("sacct: error: Slurm accounting storage is disabled")
    fields = (value("-o") or value("--format")).split(",")
    every_run = "-D" in args or "--duplicates" in args
    for j in ids:
        job = jobs.get(j)
        if not job or not job["accounted"]:
            continue
        runs = job["attempts"] if every_run else job["attempts"][-1:]
        for run in runs or [{{}}]:
            row = {{"JobID": j, "State": job["state"], "NodeList": job["nodes"], **run}}
            if not every_run:  # the latest run, in the job's current state
                row["State"] = job["state"]
            print("|".join(str(row.get(f, "")) for f in fields))
elif name == "scontrol":
    if args[:1] == ["show"]:
        kind, what = args[1], args[-1]
        if kind == "job" and what in jobs and jobs[what]["held"]:
            job = jobs[what]
            print(f"JobId={{what}} JobState={{job['state']}} Reason={{job['reason'] or 'None'}} "
                  f"Partition={{job['partition']}} NodeList={{job['nodes'] or '(null)'}} "
                  f"ExcNodeList={{job['exc'] or '(null)'}}")
        elif kind == "node" and what in nodes:
            print(f"NodeName={{what}} State={{nodes[what]}}")
        elif kind == "partition" and what in s["partitions"]:
            print(f"PartitionName={{what}} Nodes={{s['partitions'][what]}}")
        sys.exit(0)
    if args[:1] == ["requeue"]:
        job = jobs.get(args[1])
        if job is None or not job["held"]:
            fail("Invalid job id specified")
        job.update(state="PENDING", reason="BeginTime")
        save()
        sys.exit(0)
    if args[:1] == ["update"]:
        fields = dict(a.split("=", 1) for a in args[1:] if "=" in a)
        job = jobs.get(fields.pop("JobId", ""))
        if job is None:
            fail("Invalid job id specified")
        if s["refuse_updates"] > 0:
            s["refuse_updates"] -= 1
            save()
            fail("scontrol: error: Job is no longer pending execution for job")
        if "ExcNodeList" in fields:
            job["exc"] = fields["ExcNodeList"]
        save()
        sys.exit(0)
    fail(f"fake scontrol: unexpected {{line}}")
elif name == "scancel":
    job = jobs.get(args[-1])
    if job is None or not job["held"]:
        fail(f"scancel: error: Kill job error on job id {{args[-1]}}: Invalid job id specified")
    job.update(state="CANCELLED", reason="")
    save()
elif name == "sinfo" and args == ["--version"]:
    print("slurm " + s["version"])
elif name == "sbatch" and "--test-only" in args:
    sys.stdin.read()
    sys.stderr.write("sbatch: Job 4242 to start at 2026-12-07T04:00:00 using 2 processors on nodes node[1-2]\n")
else:
    fail(f"fake {{name}}: unexpected {{line}}")
'''


class FakeSlurm:
    """Slurm's commands faked on a PATH of their own, configured per test."""

    def __init__(self, root: Path):
        self.root = Path(root) / "fake-slurm"
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state_file, self.calls_file = self.root / "state.json", self.root / "calls.jsonl"
        self._write({"jobs": {}, "nodes": {}, "partitions": {}, "answers": [], "controller_down": False,
                     "accounting": True, "refuse_updates": 0, "version": "23.11.10"})
        self.calls_file.write_text("")
        shim = SHIM.format(python=sys.executable, state=str(self.state_file), calls=str(self.calls_file))
        for name in COMMANDS:
            path = self.bin / name
            path.write_text(shim)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)

    # ----- configuration -----------------------------------------------------------------------
    def _read(self) -> dict:
        return json.loads(self.state_file.read_text())

    def _write(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))

    def set(self, **fields) -> FakeSlurm:
        """``controller_down``, ``accounting``, ``refuse_updates`` (how many ``scontrol update``
        calls fail first, as for a job not yet pending), ``version``."""
        state = self._read()
        state.update(fields)
        self._write(state)
        return self

    def job(self, job_id: str, state: str, reason: str = "", nodes: str = "", held: bool = True,
            accounted: bool = True, attempts: list[dict] | None = None, time_left: str = "INVALID",
            partition: str = "debug", exc: str = "") -> FakeSlurm:
        """A job. ``held``: the controller still holds it (squeue and ``scontrol show job`` see
        it); ``accounted``: sacct knows it, with ``attempts`` (sacct's rows, oldest first, as
        ``{field: text}``; the latest is the one shown without ``--duplicates``)."""
        data = self._read()
        data["jobs"][str(job_id)] = {"state": state, "reason": reason, "nodes": nodes, "held": held,
                                     "accounted": accounted, "attempts": attempts or [], "time_left": time_left,
                                     "partition": partition, "exc": exc}
        self._write(data)
        return self

    def node(self, name: str, state: str) -> FakeSlurm:
        data = self._read()
        data["nodes"][name] = state
        self._write(data)
        return self

    def partition(self, name: str, nodes: str) -> FakeSlurm:
        data = self._read()
        data["partitions"][name] = nodes
        self._write(data)
        return self

    def answer(self, pattern: str, stdout: str = "", stderr: str = "", code: int = 0) -> FakeSlurm:
        """Answer any command line matching ``pattern`` (a glob over ``"cmd arg ..."``) with a
        recorded output, before the fake's own logic (the first match wins)."""
        data = self._read()
        data["answers"].append([pattern, stdout, stderr, code])
        self._write(data)
        return self

    def replay(self, folder: Path) -> FakeSlurm:
        """Answer ``profile discover``'s questions from a recorded version's files (tests/data/VERSION)."""
        for pattern, name in (("scontrol show config", "config.txt"), ("scontrol -o show node", "node.txt"),
                              ("scontrol -o show partition", "partition.txt"),
                              ("scontrol show topology", "topology.txt"), ("sacctmgr *qos*", "qos.txt"),
                              ("sacctmgr *assoc*", "assoc.txt")):
            path = Path(folder) / name
            self.answer(pattern, path.read_text() if path.exists() else "")
        return self

    # ----- what happened -----------------------------------------------------------------------
    def calls(self, command: str | None = None) -> list[list[str]]:
        """Every command line run so far (``[name, *args]``), or only ``command``'s."""
        lines = [json.loads(line) for line in self.calls_file.read_text().splitlines() if line]
        return [c for c in lines if command is None or c[0] == command]

    def matching(self, pattern: str) -> list[list[str]]:
        return [c for c in self.calls() if fnmatch.fnmatchcase(" ".join(c), pattern)]

    def state(self, job_id: str) -> str:
        return self._read()["jobs"][str(job_id)]["state"]

    def excluded(self, job_id: str) -> str:
        return self._read()["jobs"][str(job_id)]["exc"]

    @property
    def path(self) -> str:
        """A PATH with the fake first (the system's after it, for python, sh, ...)."""
        return f"{self.bin}{os.pathsep}/usr/bin{os.pathsep}/bin"

    @property
    def env(self) -> dict:
        return {"PATH": self.path}
