"""The service through each job's backend, against the shared fake of Slurm's commands
(tests/fake_slurm.py): states in batches, cancel, resume's exclusion of failed nodes, the
requeue command lines the adapter builds, goodput from sacct's attempts. Fast, no cluster: the
dev-cluster tests (``-m slurm``) check the same command lines on a real Slurm."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from hpcorch import service
from hpcorch.cluster.slurm import Slurm, SlurmError
from hpcorch.state.registry import Registry
from hpcorch.submit.local import LocalBackend
from hpcorch.submit.slurm import SlurmBackend

pytestmark = pytest.mark.timeout(120)

PACKAGE = Path(__file__).resolve().parents[2] / "hpcorch"


@pytest.fixture
def slurm_path(fake_slurm, monkeypatch, tmp_path):
    """The fake first on PATH, and a registry of this test's own."""
    monkeypatch.setenv("PATH", fake_slurm.path)
    monkeypatch.setenv("HPCORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SLURM_CONF", raising=False)
    return fake_slurm


def _registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry.sqlite")


def _add(reg: Registry, tmp_path, job_id: str, scheduler: str = "slurm", **kw):
    run = tmp_path / f"run-{job_id}"
    run.mkdir(exist_ok=True)
    return reg.add(job_id, f"job{job_id}", "devcluster", scheduler, str(run), str(run / "job.yaml"), **kw)


# ----- the choice of backend -----------------------------------------------------------------------
def test_each_entry_gets_its_kinds_backend_once(tmp_path):
    reg = _registry(tmp_path)
    assert isinstance(service.backend_for(_add(reg, tmp_path, "7")), SlurmBackend)
    assert isinstance(service.backend_for(_add(reg, tmp_path, "8", scheduler="local")), LocalBackend)
    assert service.backend_of("process").kind == "process"
    with pytest.raises(service.HpcorchError, match="unknown scheduler 'pbs'"):
        service.backend_of("pbs")


# ----- states and ls ------------------------------------------------------------------------------
def test_ls_asks_squeue_once_and_sacct_once_for_what_the_controller_forgot(slurm_path, tmp_path):
    fake = slurm_path
    fake.job("11", "RUNNING", nodes="node1")
    fake.job("12", "PENDING", reason="Priority")
    fake.job("13", "COMPLETED", held=False)
    fake.job("14", "PENDING", reason="None")
    reg = _registry(tmp_path)
    for job_id in ("11", "12", "13", "14", "15"):  # 15: known to no one
        _add(reg, tmp_path, job_id)
    rows = {r["job_id"]: r for r in service.jobs(registry=reg)}
    assert {j: r["state"] for j, r in rows.items()} == {
        "11": "RUNNING", "12": "PENDING (Priority)", "13": "COMPLETED", "14": "PENDING", "15": "ENDED"}
    assert fake.calls("squeue") == [["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", "11,12,13,14,15"]]
    fields = ",".join(Slurm.ATTEMPT_FIELDS)  # then goodput: every job's runs in one sacct call
    assert fake.calls("sacct") == [["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", "13,15"],
                                   ["sacct", "-D", "-X", "-n", "-P", f"--format={fields}", "-j", "11,12,13,14,15"]]
    assert all(r["goodput"] is None for r in rows.values())  # nothing ran in these run directories


def test_without_a_controller_accounting_answers_and_the_rest_is_unknown(slurm_path, tmp_path):
    fake = slurm_path.set(controller_down=True)
    fake.job("21", "FAILED")
    reg = _registry(tmp_path)
    entries = [_add(reg, tmp_path, "21"), _add(reg, tmp_path, "22")]
    assert SlurmBackend().states(entries) == {entries[0].key: "FAILED", entries[1].key: "UNKNOWN"}
    assert service.status(str(entries[0].key), registry=reg)["state"] == "FAILED"


# ----- cancel --------------------------------------------------------------------------------------
def test_cancel_sends_scancel_to_the_jobs_cluster(slurm_path, tmp_path):
    fake = slurm_path
    fake.job("31", "RUNNING")
    reg = _registry(tmp_path)
    entry = _add(reg, tmp_path, "31")
    assert service.cancel(str(entry.key), registry=reg) == "cancel sent to job 31"
    assert fake.calls("scancel") == [["scancel", "31"]] and fake.state("31") == "CANCELLED"
    fake.job("32", "RUNNING", held=False)  # scancel refuses a job the controller forgot: one line
    with pytest.raises(SlurmError, match="^scancel 32 failed: scancel: error: Kill job error"):
        service.cancel(str(_add(reg, tmp_path, "32").key), registry=reg)


def test_cancel_of_a_slurm_job_that_has_ended_sends_nothing(slurm_path, tmp_path):
    fake = slurm_path
    fake.job("33", "CANCELLED")
    reg = _registry(tmp_path)
    assert service.cancel(str(_add(reg, tmp_path, "33").key), registry=reg) == \
        "job 33 has ended (CANCELLED); nothing to cancel"
    assert fake.calls("scancel") == []


def test_cancel_of_a_local_job_that_is_gone_does_nothing(tmp_path):
    reg = _registry(tmp_path)
    entry = _add(reg, tmp_path, "999999999", scheduler="local")
    assert service.cancel(str(entry.key), registry=reg) == "job 999999999 is not running; nothing to cancel"


# ----- resume --------------------------------------------------------------------------------------
def test_resume_excludes_the_nodes_that_failed_under_the_job(slurm_path, tmp_path, monkeypatch):
    fake = slurm_path
    fake.job("41", "NODE_FAIL", held=False, nodes="node[3-4]",
             attempts=[{"NodeList": "node[1-2]", "State": "REQUEUED"}, {"NodeList": "node[3-4]"}])
    for node, state in (("node1", "IDLE"), ("node2", "DOWN*"), ("node3", "DRAINED"), ("node4", "MIXED")):
        fake.node(node, state)
    reg = _registry(tmp_path)
    entry = _add(reg, tmp_path, "41", exclude="node9")
    planned: list[list[str]] = []
    monkeypatch.setattr(service, "plan", lambda job, profile, overrides, **kw: planned.append(overrides) or "plan")
    monkeypatch.setattr(service, "submit", lambda plan, **kw: service.Submission(entry, None))
    assert service.resume(str(entry.key), exclude="node7", registry=reg).entry is entry
    assert planned == [["resources.exclude=node[2-3,7,9]"]]
    assert ["sacct", "-j", "41", "--duplicates", "-X", "-n", "-P", "-o", "NodeList"] in fake.calls("sacct")
    assert service.failed_nodes(entry) == ["node2", "node3"]


def test_resume_refuses_a_live_or_completed_job_before_planning(slurm_path, tmp_path, monkeypatch):
    fake = slurm_path
    fake.job("51", "RUNNING")
    fake.job("52", "COMPLETED", held=False)
    reg = _registry(tmp_path)
    monkeypatch.setattr(service, "plan", lambda *a, **k: pytest.fail("planned a job that must not resume"))
    with pytest.raises(service.HpcorchError, match=r"is RUNNING; nothing to resume"):
        service.resume(str(_add(reg, tmp_path, "51").key), registry=reg)
    with pytest.raises(service.HpcorchError, match="completed; nothing to resume"):
        service.resume(str(_add(reg, tmp_path, "52").key), registry=reg)
    fake.job("53", "COMPLETING")  # ending, or being requeued by Slurm: a cancel would lose the requeue
    with pytest.raises(service.HpcorchError, match="is COMPLETING: .*Slurm may be requeuing it") as refused:
        service.resume(str(_add(reg, tmp_path, "53").key), registry=reg)
    assert "cancel" not in str(refused.value)
    asked = len(fake.calls())
    with pytest.raises(service.ConfigError, match="--exclude"):  # the user's input first, before Slurm
        service.resume("no-such-job", exclude="node[", registry=reg)
    assert len(fake.calls()) == asked


# ----- remote jobs: their login node's hpcorch answers -------------------------------------------
def test_remote_entries_go_to_their_login_node_and_the_others_stay_here(slurm_path, tmp_path, monkeypatch):
    from hpcorch.remote import ops
    from hpcorch.state.registry import RemoteRef

    fake = slurm_path
    fake.job("91", "RUNNING")
    reg = _registry(tmp_path)
    here = _add(reg, tmp_path, "91")
    there = _add(reg, tmp_path, "5", remote=RemoteRef("cluster-a", 3, "login1"))
    asked: list[tuple] = []
    monkeypatch.setattr(ops, "rows", lambda entries: asked.append(("rows", [e.key for e in entries]))
                        or {e.key: {"state": "PENDING (Priority)", "goodput": 0.25} for e in entries})
    monkeypatch.setattr(ops, "cancel", lambda entry: asked.append(("cancel", entry.key)) or "cancelled (on login1)")
    monkeypatch.setattr(ops, "resume", lambda entry, exclude, allow, registry: asked.append(("resume", exclude))
                        or entry)
    monkeypatch.setattr(ops, "pull", lambda entry, into: asked.append(("pull", entry.key)) or ("dir", None))
    listed = {r["key"]: r for r in service.jobs(registry=reg)}
    assert listed[there.key]["state"] == "PENDING (Priority)" and listed[there.key]["goodput"] == 0.25
    assert listed[there.key]["host"] == "login1" and listed[here.key]["state"] == "RUNNING"
    assert service.cancel(str(there.key), registry=reg) == "cancelled (on login1)"
    assert service.resume(str(there.key), exclude="node[1-2]", registry=reg).entry == there
    assert service.pull(str(there.key), registry=reg) == ("dir", None)
    assert asked == [("rows", [there.key]), ("cancel", there.key), ("resume", "node[1-2]"), ("pull", there.key)]
    assert fake.calls("squeue")[0][-1] == "91"  # the remote job is not asked of this machine's Slurm
    with pytest.raises(service.HpcorchError, match="ran from this machine; its run directory is .*nothing to pull"):
        service.pull(str(here.key), registry=reg)


def test_only_a_slurm_job_is_requeued_or_checked(tmp_path):
    reg = _registry(tmp_path)
    local = _add(reg, tmp_path, "999999998", scheduler="local")
    with pytest.raises(service.HpcorchError, match="is a local job: only a Slurm job is requeued"):
        service.backend_for(local).requeue(local, ["node1"])
    with pytest.raises(service.HpcorchError, match="--check asks a Slurm cluster; profile 'local' has none"):
        service.check(service.plan(PACKAGE / "jobs/gpt-tiny.yaml", "local",
                                   run_dir=tmp_path / "r", registry=reg), script="")


# ----- the command lines the adapter builds ---------------------------------------------------------
def test_requeue_exclusion_and_start_now_command_lines(slurm_path):
    fake = slurm_path
    fake.job("61", "RUNNING", time_left="1:02:03")
    slurm = Slurm()
    slurm.requeue("61")
    slurm.exclude_nodes("61", "node[2-3]")
    slurm.start_now("61")
    assert fake.calls("scontrol") == [["scontrol", "requeue", "61"],
                                      ["scontrol", "update", "JobId=61", "ExcNodeList=node[2-3]"],
                                      ["scontrol", "update", "JobId=61", "StartTime=now"]]
    assert fake.excluded("61") == "node[2-3]" and fake.state("61") == "PENDING"
    assert slurm.time_left("61") == 3723 and slurm.time_left("404") is None
    assert fake.calls("squeue")[-1] == ["squeue", "-h", "-j", "404", "-o", "%L"]
    assert slurm.version() == "23.11.10" and fake.calls("sinfo") == [["sinfo", "--version"]]


def test_recovery_requeues_then_excludes_once_pending_merging_what_was_excluded(slurm_path, monkeypatch):
    from hpcorch.batch import recovery

    fake = slurm_path.set(refuse_updates=2)  # Slurm refuses ExcNodeList until the requeue made it pending
    fake.job("71", "RUNNING", exc="node1")
    monkeypatch.setenv(recovery.HOLD_ENV, "keep")  # no detached helper in a unit test
    recovery.requeue_without(Slurm(), "71", ["node3", "node2"], patience_s=10)
    updates = fake.matching("scontrol update *")
    assert fake.calls("scontrol")[0] == ["scontrol", "requeue", "71"]
    assert updates == [["scontrol", "update", "JobId=71", "ExcNodeList=node[1-3]"]] * 3
    assert fake.excluded("71") == "node[1-3]"

    fake.set(refuse_updates=1000)  # never pending: Slurm's refusal after the patience
    fake.job("72", "RUNNING")
    with pytest.raises(SlurmError, match="no longer pending"):
        recovery.requeue_without(Slurm(), "72", ["node2"], patience_s=0.5)


def test_a_requeue_slurm_already_made_is_not_an_error(slurm_path, monkeypatch):
    from hpcorch.batch import recovery

    fake = slurm_path
    fake.answer("scontrol requeue 81", stderr="Requested operation is presently disabled\n", code=1)
    fake.job("81", "PENDING", reason="BeginTime")
    monkeypatch.setenv(recovery.HOLD_ENV, "keep")
    recovery.requeue_without(Slurm(), "81", [])
    fake.job("82", "FAILED")
    fake.answer("scontrol requeue 82", stderr="Job has already finished\n", code=1)
    with pytest.raises(SlurmError, match="^scontrol requeue failed: Job has already finished$"):
        recovery.requeue_without(Slurm(), "82", [])


def test_a_missing_command_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SlurmError, match=r"^squeue: not found; run this on a login node"):
        Slurm().queue(["1"])
    assert Slurm().version() is None


# ----- goodput from accounting ---------------------------------------------------------------------
def test_goodput_reads_every_attempt_from_sacct(slurm_path, tmp_path):
    from test_goodput import T0, _two_attempts

    from hpcorch.observe import goodput as gp

    fake = slurm_path
    tl, rows = _two_attempts(tmp_path)
    fake.job("77", "COMPLETED", held=False, attempts=rows)
    reg = _registry(tmp_path)
    entry = dataclasses.replace(reg.add("77", "x", "devcluster", "slurm", str(tl.run.root), ""), submitted=T0 - 30)
    got = gp.goodput(entry)
    assert got.source == "sacct" and len(got.attempts) == 2
    assert got.goodput == pytest.approx(gp.summarize("sacct", gp.sacct_attempts(rows), gp.RunLog.read(tl.run)).goodput)
    fields = ",".join(Slurm.ATTEMPT_FIELDS)
    assert fake.calls("sacct") == [["sacct", "-D", "-X", "-n", "-P", f"--format={fields}", "-j", "77"]]
    listed = service.jobs(registry=reg)
    assert listed[0]["state"] == "COMPLETED" and listed[0]["goodput"] == pytest.approx(got.goodput)

    fake.set(accounting=False)  # no slurmdbd: the run directory's own records answer
    assert gp.goodput(entry).source == "registry"


# ----- every Slurm command line in the adapter ------------------------------------------------------
SLURM_COMMANDS = {"sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo", "sacctmgr"}
# Calls that run a command: subprocess's, and the runners that hand argv on to one.
RUNNING_CALLS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput",
                 "system", "execvp", "execv", "spawnvp", "create_subprocess_exec", "ask", "_call", "runner"}


def slurm_command_lines(source: str) -> list[int]:
    """Lines of ``source`` that build a Slurm command line: an argv list or tuple starting
    with a Slurm command's name, or a call that runs one named by its first argument."""
    found = []
    for node in ast.walk(ast.parse(source)):
        first = None
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            first = node.elts[0]
        elif isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0] if name in RUNNING_CALLS else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and \
                first.value.split()[:1] and first.value.split()[0] in SLURM_COMMANDS:
            found.append(node.lineno)
    return found


def test_the_detector_finds_command_lines_and_nothing_else():
    assert slurm_command_lines('subprocess.run(["sinfo", "--version"])') == [1]
    assert slurm_command_lines('slurm.run("scontrol", "requeue", job_id)') == [1]
    assert slurm_command_lines('os.system("squeue -h")') == [1]
    assert slurm_command_lines('shutil.which("sbatch")\nlog.info("sacct said %s", x)') == []


def test_every_slurm_command_line_is_written_in_the_slurm_adapter():
    """``cluster/`` is the adapter (and the dev cluster, which starts Slurm's daemons); every
    other module asks a :class:`~hpcorch.cluster.slurm.Slurm` method."""
    stray = [f"{path.relative_to(PACKAGE.parent)}:{line}"
             for path in sorted(PACKAGE.rglob("*.py")) if "cluster" not in path.relative_to(PACKAGE).parts[:1]
             for line in slurm_command_lines(path.read_text())]
    assert not stray, "Slurm command lines outside hpcorch/cluster/:\n" + "\n".join(stray)


KINDS = {"slurm", "local", "process", "remote"}


def kind_branches(source: str, allowed: set[str]) -> list[str]:
    """Functions of ``source`` (outside ``allowed``) that compare with a scheduler kind's name
    or test ``.remote``: the branches a backend call replaces."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef) or fn.name in allowed:
            continue
        for node in ast.walk(fn):
            compared = isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in KINDS for c in [node.left, *node.comparators])
            tested = isinstance(node, (ast.If, ast.IfExp)) and isinstance(node.test, ast.Attribute) \
                and node.test.attr == "remote"
            if compared or tested:
                found.append(f"{fn.name}:{node.lineno}")
    return found


def test_the_service_chooses_the_backend_once_and_never_branches_on_the_kind():
    assert kind_branches('def f(e):\n    if e.remote:\n        pass\n    return e.scheduler == "slurm"\n', set()) \
        == ["f:2", "f:4"]
    source = (PACKAGE / "service" / "__init__.py").read_text()
    assert kind_branches(source, allowed={"backend_for", "describe"}) == []
