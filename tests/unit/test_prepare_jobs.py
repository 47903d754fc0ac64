"""A prepare's Slurm array as a job: its step runs inside the profile's launch wrapper (as a
training rank), and ``hpcorch data status|cancel|logs OUT`` read the markers and Slurm (faked
here; tests/integration/test_prepare_slurm.py runs them on the dev cluster)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conftest import run_cli

from hpcorch.data import prepare as prep
from hpcorch.service import data as service
from hpcorch.service import data_jobs
from hpcorch.spec.launch import Command, Launch
from hpcorch.spec.profile import load_profile
from hpcorch.submit.array import ArrayBatch

PROFILES = Path(__file__).resolve().parents[1] / "data" / "profiles"


def _corpus(root: Path, files: int = 3) -> Path:
    src = root / "corpus"
    src.mkdir()
    for i in range(files):
        (src / f"f{i}.txt").write_text(f"document {i} " * 20)
    return src


def _srun_step(script: str) -> str:
    """The srun line of the script with its continuation, as one line."""
    start = script.index("\nsrun ") + 1
    return script[start:].replace("\\\n", "").split("\n")[0]


def test_prepare_step_runs_inside_the_profiles_wrapper(tmp_path):
    src = _corpus(tmp_path)
    uenv = service.prepare([str(src)], tmp_path / "a", tokenizer="bytes", profile=str(PROFILES / "gh200-uenv.yaml"),
                           dry_run=True)
    assert "--uenv=pytorch/v2.6.0:v1 --view=default   /user-environment/env/default/bin/python -u -m " \
           f"hpcorch.data.prepare {tmp_path / 'a'}" in _srun_step(uenv.script)
    pyxis = service.prepare([str(src)], tmp_path / "a", tokenizer="bytes", profile=str(PROFILES / "efa-cloud.yaml"),
                            dry_run=True)
    step = _srun_step(pyxis.script)
    assert "'--container-image=nvcr.io#nvidia/pytorch:24.05-py3' --container-mounts=/fsx" in step
    assert "/usr/bin/python -u -m hpcorch.data.prepare" in step
    assert not (tmp_path / "a").exists()

    # A command wrapper and an activation step: their words come before the interpreter,
    # which (not named) is then the one on that PATH, as for the training step.
    cluster = load_profile("devcluster")
    wrapped = dataclasses.replace(cluster, launch=Launch(wrapper=Command(argv=["/opt/site/in-env", "--quiet"]),
                                                         activate="/opt/venv/bin/activate"))
    plan = service.plan_prepare([str(src)], tmp_path / "b", tokenizer="bytes")
    batch = ArrayBatch(plan.tasks.root, plan.tasks.runs_dir / "0000.txt", 0, 1)
    step = _srun_step(service.render_prepare(plan, wrapped, batch, cpus=4))
    assert step.startswith("srun --nodes=1 --ntasks=1 --cpus-per-task=4 --kill-on-bad-exit=1")
    assert ("/opt/site/in-env --quiet bash -c '. /opt/venv/bin/activate && exec \"$@\"' activate "
            "python3 -u -m hpcorch.data.prepare") in step
    # No wrapper: the profile's interpreter (or this one) straight under srun.
    plain = _srun_step(service.render_prepare(plan, cluster, batch))
    assert plain.endswith(f"-u -m hpcorch.data.prepare {tmp_path / 'b'}") and "--container" not in plain


def _submitted(tmp_path, fake_slurm, monkeypatch, shards: int = 3) -> Path:
    """A prepare of ``shards`` shards submitted as array 100 to the fake Slurm."""
    monkeypatch.setenv("PATH", fake_slurm.path)
    fake_slurm.answer("sbatch --parsable", stdout="100\n")
    src = _corpus(tmp_path, shards)
    out = tmp_path / "out"
    result = service.prepare([str(src)], out, tokenizer="bytes", shard_bytes=1, profile="devcluster")
    assert result.arrays == ["100"] and len(result.ran) == shards
    return out


def test_status_cancel_and_logs_of_a_submitted_prepare(tmp_path, fake_slurm, monkeypatch):
    out = _submitted(tmp_path, fake_slurm, monkeypatch)
    rows = json.loads((out / prep.WORK / data_jobs.SUBMISSIONS).read_text())
    assert [(r["array"], r["offset"], r["count"]) for r in rows] == [("100", 0, 3)]
    prep.load_plan(out).tasks.mark_done("shard_00000")
    fake_slurm.answer("squeue -h -r -t all -j 100 *", stdout="100_1|RUNNING\n100_2|PENDING\n")
    states = [(r.shard, r.state, r.task, r.slurm) for r in data_jobs.status(out)]
    assert states == [("shard_00000", "done", None, None), ("shard_00001", "running", "100_1", "RUNNING"),
                      ("shard_00002", "pending", "100_2", "PENDING")]

    shown = run_cli("data", "status", out, env=fake_slurm.env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "1 done, 1 running, 1 pending (of 3 shards)"
    assert "shard_00001  running       100_1 RUNNING" in shown.stdout

    fake_slurm.job("100", "RUNNING")
    cancelled = run_cli("data", "cancel", out, env=fake_slurm.env)
    assert cancelled.returncode == 0 and "cancelled array 100" in cancelled.stdout, cancelled.stderr
    assert ["scancel", "100"] in fake_slurm.calls()

    # Gone from the controller: accounting says how the tasks ended; no marker -> failed.
    fake_slurm.set(answers=[])
    fake_slurm.answer("squeue *", stdout="")
    fake_slurm.answer("sacct *", stdout="100_1|CANCELLED by 0\n100_2|FAILED\n")
    assert [r.state for r in data_jobs.status(out)] == ["done", "failed", "failed"]
    assert data_jobs.cancel(out) == []

    (out / prep.WORK / "logs").mkdir(parents=True, exist_ok=True)
    (out / prep.WORK / "logs" / "100_2.err").write_text("Traceback: boom\n")
    logs = run_cli("data", "logs", out, "--task", "2", "--err", env=fake_slurm.env)
    assert logs.returncode == 0 and "100_2.err <==\nTraceback: boom" in logs.stdout, logs.stderr
    failed = run_cli("data", "logs", out, env=fake_slurm.env)  # every failed shard's
    assert "100_1.out <==\n(no such file yet)" in failed.stdout and "Traceback: boom" in failed.stdout
    bad = run_cli("data", "logs", out, "--task", "7", env=fake_slurm.env)
    assert bad.returncode == 2 and "--task 7: expected a shard number from 0 to 2" in bad.stderr


def test_a_rerun_records_its_own_array(tmp_path, fake_slurm, monkeypatch):
    """The rerun's array runs only the unfinished shards; status follows each to its latest task."""
    out = _submitted(tmp_path, fake_slurm, monkeypatch)
    prep.load_plan(out).tasks.mark_done("shard_00000")
    prep.load_plan(out).tasks.mark_done("shard_00002")
    fake_slurm.set(answers=[])
    fake_slurm.answer("squeue -h -r -t all -j 100 *", stdout="")
    fake_slurm.answer("sbatch --parsable", stdout="200\n")
    fake_slurm.answer("squeue -h -r -t all -j 200 *", stdout="200_0|PENDING\n")
    rerun = service.prepare([str(tmp_path / "corpus")], out, tokenizer="bytes", shard_bytes=1, profile="devcluster")
    assert rerun.arrays == ["200"] and rerun.ran == ["shard_00001"]
    assert [(r.state, r.task) for r in data_jobs.status(out)] == [("done", None), ("pending", "200_0"),
                                                                   ("done", None)]


def test_a_prepare_made_here_has_no_arrays(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm.path)
    src = _corpus(tmp_path)
    service.prepare([str(src)], tmp_path / "out", tokenizer="bytes", shard_bytes=1)
    assert {r.state for r in data_jobs.status(tmp_path / "out")} == {"done"}
    assert data_jobs.cancel(tmp_path / "out") == []
    assert fake_slurm.calls() == []  # nothing was submitted: Slurm is not asked
    never = run_cli("data", "logs", tmp_path / "out", "--task", "0", env=fake_slurm.env)
    assert never.returncode == 2 and "never run as an array task" in never.stderr
    missing = run_cli("data", "status", tmp_path / "nothing", env=fake_slurm.env)
    assert missing.returncode == 2 and "no prepare here" in missing.stderr and "Traceback" not in missing.stderr


def test_status_logs_cancel_import_neither_torch_nor_submitit(tmp_path):
    import subprocess
    import sys

    src = _corpus(tmp_path, 1)
    service.prepare([str(src)], tmp_path / "out", tokenizer="bytes")
    out = str(tmp_path / "out")
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            f"for args in (['data', 'status', {out!r}], ['data', 'cancel', {out!r}], ['data', 'logs', {out!r}]):\n"
            "    try:\n        main(args)\n    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('torch', 'submitit', 'paramiko') if m in sys.modules))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == "[]"


def test_cancel_finds_arrays_of_a_folder_without_submissions(tmp_path, fake_slurm, monkeypatch):
    """A folder submitted before submissions.json existed: its arrays.json ids are cancelled."""
    out = _submitted(tmp_path, fake_slurm, monkeypatch)
    (out / prep.WORK / data_jobs.SUBMISSIONS).unlink()
    fake_slurm.answer("squeue -h -r -t all -j 100 *", stdout="100_[0-2]|PENDING\n")
    fake_slurm.job("100", "PENDING")
    assert data_jobs.cancel(out) == ["100"] and ["scancel", "100"] in fake_slurm.calls()
    assert {r.state for r in data_jobs.status(out)} == {"not submitted"}


def test_rendered_task_runs_its_shard_through_the_wrapper(tmp_path):
    """The rendered array script run by bash, with an ``srun`` that drops its options and runs
    the step here: the command wrapper runs, then the task writes its shard and marker."""
    import os
    import subprocess
    import sys

    from hpcorch.submit.array import plan_arrays

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    wrap = tmp_path / "wrap.sh"
    wrap.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/wrapped\nexec "$@"\n')
    for f in (bin_dir / "srun", wrap):
        f.chmod(0o755)
    cluster = load_profile("devcluster")
    cluster = dataclasses.replace(cluster, launch=Launch(python=sys.executable, wrapper=Command(argv=[str(wrap)])))
    plan = service.plan_prepare([str(_corpus(tmp_path, 2))], tmp_path / "out", tokenizer="bytes", shard_bytes=1)
    prep.save_plan(plan)
    batch = plan_arrays(plan.tasks, plan.tasks.remaining())[0]
    script = service.render_prepare(plan, cluster, batch)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "1"}
    ran = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "wrapped").read_text().split() == [sys.executable, "-u", "-m", "hpcorch.data.prepare",
                                                          str(tmp_path / "out")]
    assert prep.load_plan(tmp_path / "out").tasks.done() == {"shard_00001"}
    assert [r.state for r in data_jobs.status(tmp_path / "out")] == ["not submitted", "done"]
