"""``program:`` jobs without a cluster: the schema, the environment a program gets (torchrun's
variables and hpcorch's), the argv per form, the plan's checks and dry run, the runtime helper's
records (read back by the observers), the signal passing, and a local 2-process run with a stop."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from hpcorch.errors import ConfigError, PlanError
from hpcorch.runtime.env import Rendezvous, hpcorch_env, program_argv, torchrun_env
from hpcorch.spec.job import load_job
from hpcorch.spec.program import ProgramSpec

pytestmark = pytest.mark.timeout(240)


def _job(tmp_path, program: str, extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(f"name: prog\nresources: {{nodes: 1, tasks_per_node: 3, time: 5}}\nprogram: {program}\n{extra}")
    return path


def test_schema_one_line_errors(tmp_path):
    job = load_job(_job(tmp_path, "{command: [python, train.py]}"))
    assert job.program.command == ["python", "train.py"] and job.program.launcher == "direct"
    # 3 ranks would not fit the default trainer's batch: a program job has no trainer layout to check
    with pytest.raises(ConfigError, match=r"program: expected program or trainer, not both"):
        load_job(_job(tmp_path, "{command: [x]}", "trainer: {steps: 5}\n"))
    with pytest.raises(ConfigError, match=r"program.command: expected exactly one of"):
        load_job(_job(tmp_path, "{command: [x], module: m}"))
    with pytest.raises(ConfigError, match=r"program.module: expected package.module"):
        load_job(_job(tmp_path, "{module: 'a b'}"))
    with pytest.raises(ConfigError, match=r"program.command: expected a non-empty list"):
        load_job(_job(tmp_path, "{command: []}"))
    with pytest.raises(ConfigError, match=r"program.launcher"):
        load_job(_job(tmp_path, "{command: [x], launcher: mpirun}"))


def test_torchrun_env_and_hpcorch_env():
    rv = Rendezvous(rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1, nodes=2,
                    master_addr="node1", master_port=29500)
    env = torchrun_env(rv, "42")
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                                "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID")} == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2", "ROLE_RANK": "5", "ROLE_WORLD_SIZE": "8", "MASTER_ADDR": "node1",
        "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_RUN_ID": "42"}
    mine = hpcorch_env("/r", "/r/ck", 2, "preemption", 1000.0, "USR1", "42", 50, now=900.0)
    assert mine["HPCORCH_ATTEMPT"] == "2" and mine["HPCORCH_TIME_LEFT_S"] == "100"
    assert mine["HPCORCH_REQUEUE_EXIT"] == "3" and mine["HPCORCH_STOP_SIGNAL"] == "USR1"
    assert mine["HPCORCH_REQUEUE_MARKER"] == "/r/exits/attempt-2/requeue-me"
    assert hpcorch_env("/r", "/r/ck", 0, "none", None, "USR2", "1", None, 0.0)["HPCORCH_DEADLINE"] == ""


def test_argv_per_form():
    env = {"HPCORCH_CHECKPOINT_DIR": "/ck"}
    cmd = ProgramSpec(command=["python", "t.py", "--dir", "$HPCORCH_CHECKPOINT_DIR"], args=["--x"])
    assert program_argv(cmd, python="py", env=env) == ["python", "t.py", "--dir", "/ck", "--x"]
    assert program_argv(ProgramSpec(module="pkg.train", args=["1"]), python="py") == ["py", "-u", "-m", "pkg.train", "1"]
    call = program_argv(ProgramSpec(module="pkg.train:main"), python="py")
    assert call[:3] == ["py", "-u", "-c"] and call[4] == "pkg.train:main"
    rv = Rendezvous(0, 0, 8, 4, 1, 2, "n1", 1234)
    tr = program_argv(ProgramSpec(command=["python", "t.py"], launcher="torchrun"), rv, python="py")
    assert tr[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc-per-node=4" in tr and "--node-rank=1" in tr
    assert tr[-3:] == ["--no-python", "python", "t.py"]


def test_module_function_form_runs_and_returns_its_code(tmp_path):
    (tmp_path / "mod.py").write_text("import sys\ndef main():\n    print(sys.argv)\n    return 7\n")
    argv = program_argv(ProgramSpec(module="mod:main", args=["a"]))
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 7 and out.stdout.strip() == "['mod', 'a']"


def test_plan_checks_the_program_and_renders_without_a_model(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "t.py").write_text("")
    (code / "run.sh").write_text("#!/bin/sh\n")
    job = tmp_path / "j.yaml"
    job.write_text(f"name: p\nresources: {{nodes: 2, tasks_per_node: 2, time: 5}}\n"
                   f"program: {{command: [python, t.py], code_dir: {code}}}\n")
    dry = run_cli("submit", job, "-p", "devcluster", "--run-dir", tmp_path / "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --ntasks-per-node=2\n" in dry.stdout
    torchrun = run_cli("submit", job, "-p", "devcluster", "--run-dir", tmp_path / "run", "--dry-run",
                       "--set", "program.launcher=torchrun")
    assert "#SBATCH --ntasks-per-node=1\n" in torchrun.stdout
    plan = run_cli("plan", job, "-p", "devcluster", "--json")
    assert plan.returncode == 0, plan.stderr
    summary = json.loads(plan.stdout)
    assert "parameters" not in json.dumps(summary) and "python t.py" in json.dumps(summary)
    for setting, expected in ((["program.command=[python, missing.py]"], "the script missing.py does not exist"),
                              (["program.command=[./run.sh]"], "./run.sh is not executable"),
                              (["program.command=[./nope]"], "./nope does not exist"),
                              (["program.command=null", "program.module=no_such_mod:main"],
                               "no module named 'no_such_mod'")):
        sets = [a for s in setting for a in ("--set", s)]
        out = run_cli("plan", job, "-p", "devcluster", *sets)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert expected in out.stderr and "program." in out.stderr, out.stderr


def test_runtime_records_read_by_the_observers(tmp_path, monkeypatch):
    from hpcorch.observe.goodput import RunLog
    from hpcorch.runtime.records import Reporter, commit
    from hpcorch.state.rundir import RunDir

    run = RunDir(tmp_path)
    rep = Reporter(str(tmp_path), time.time())
    for step in (1, 2, 3):
        rep.step(step, 1.0 / step, 100, {})
    commit(str(tmp_path), 2, "/x/ck")
    assert run.latest_checkpoint() == 2 and run.progress()["step"] == 3
    again = Reporter(str(tmp_path), time.time())  # a restart from step 2's checkpoint: step 3 again
    again.step(3, 0.3, 100, {})
    assert run.progress() == {"step": 3, "restarts": 1, "steps_recomputed": 1, "loss": 0.3}
    log = RunLog.read(run)
    assert [s[2] for s in log.steps] == [False, False, False, True]  # the second step 3 is recomputed
    assert run.last_metrics()["tokens_per_s"] > 0


def test_run_program_passes_the_stop_signal_and_keeps_stderr(tmp_path):
    from hpcorch.batch.program import run_program

    code = textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGUSR1, lambda *a: (print('got usr1', file=sys.stderr, flush=True), sys.exit(3)))
        print('ready', file=sys.stderr, flush=True)
        time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys, threading, time
        sys.path.insert(0, {str(REPO)!r})
        from hpcorch.batch.program import run_program
        threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGUSR2)).start()
        code, got, tail = run_program([sys.executable, '-c', {code!r}], None, dict(os.environ),
                                      signal.SIGUSR2, signal.SIGUSR1)
        print(code, got[0], tail)
    """)], capture_output=True, text=True, timeout=60)
    code_, signum, tail = proc.stdout.split(" ", 2)
    assert (int(code_), int(signum)) == (3, signal.SIGUSR2), proc.stdout + proc.stderr
    assert "got usr1" in tail and "ready" in proc.stderr  # copied through as it came
    assert run_program  # imported at module level too: no torch, no submitit needed


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV])
def test_a_task_dies_of_its_programs_hard_death(signum):
    """srun must report the task as "Killed" (hard evidence: the node is quarantined), not as
    an exit code 137 (a rank's own error)."""
    from hpcorch.batch.program import HARD_SIGNALS

    code = f"from hpcorch.batch.program import die_of; die_of({int(signum)})"
    assert signum in HARD_SIGNALS and signal.SIGTERM not in HARD_SIGNALS
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == -signum


def test_local_train_of_a_program_stops_and_resumes_to_the_same_weights(tmp_path):
    """The shipped runtime example under ``hpcorch train --nproc 2``: stopped by SIGUSR2 (exit 3),
    run again, it ends with the uninterrupted run's weights."""
    args = ["--set", 'program.args=[--steps, "30", --step-sleep, "0.05"]']
    env = {"OMP_NUM_THREADS": "1"}
    whole = run_cli("train", "examples/ddp_runtime.yaml", "--nproc", "2", "--run-dir", tmp_path / "a", *args, env=env)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen([sys.executable, "-m", "hpcorch.cli.main", "train", "examples/ddp_runtime.yaml",
                             "--nproc", "2", "--run-dir", str(tmp_path / "b"), *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (tmp_path / "b" / "progress.json").exists():
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR2)
        assert proc.wait(timeout=60) == 3, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    again = run_cli("train", "examples/ddp_runtime.yaml", "--nproc", "2", "--run-dir", tmp_path / "b", *args, env=env)
    assert again.returncode == 0, again.stderr
    final = [(tmp_path / d / "checkpoints" / "final.sha256").read_text() for d in ("a", "b")]
    assert final[0] == final[1]
    progress = json.loads((tmp_path / "b" / "progress.json").read_text())
    assert progress["restarts"] == 1 and progress["steps_recomputed"] == 0
    status_cause = [json.loads(line).get("cause") for line in (tmp_path / "b" / "events.jsonl").read_text().splitlines()
                    if json.loads(line)["event"] == "process_start"]
    assert status_cause == [None, None]  # hpcorch train records starts, not causes (nothing requeues it)
    assert (tmp_path / "b" / "program_checkpoint.json").exists()
    assert PlanError  # imported for the plan errors' class


def test_planning_a_program_imports_neither_torch_nor_submitit():
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            "try:\n    main(['plan', 'examples/ddp_plain.yaml', '-p', 'devcluster'])\nexcept SystemExit:\n    pass\n"
            "import hpcorch.runtime\n"
            "print(sorted(m for m in ('torch', 'submitit', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_a_remote_programs_code_is_checked_in_the_code_folder_it_syncs(tmp_path):
    """Going to a login node, a relative ``program.code_dir`` resolves in the ``--code`` folder:
    a script missing there is refused here (one line, nothing connects); without ``--code`` the
    job is refused, since nothing of the program would be on the login node."""
    from hpcorch.plan.program import check_program, code_dir

    code = tmp_path / "proj"
    code.mkdir()
    (code / "t.py").write_text("")
    job = tmp_path / "j.yaml"
    job.write_text("name: p\nresources: {nodes: 1, tasks_per_node: 1, time: 5}\n"
                   "program: {command: [python, t.py], code_dir: .}\n")
    profile = tmp_path / "login.yaml"  # a login node no test reaches: every case stops before connecting
    profile.write_text((REPO / "hpcorch/profiles/devcluster.yaml").read_text() +
                       "\nlogin: {host: 127.0.0.1, port: 1}\n")
    out = run_cli("submit", job, "-p", profile, "--remote", "--code", code, "--set",
                  "program.command=[python, missing.py]", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"the script missing.py does not exist in {code}" in out.stderr, out.stderr
    out = run_cli("submit", job, "-p", profile, "--remote", cwd=code)  # t.py is here, but not there
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "program.code_dir: . is relative" in out.stderr and "--code DIR" in out.stderr, out.stderr
    spec = load_job(job, ["program.command=null", "program.module=only_there:main"])
    warnings: list[str] = []
    check_program(spec, True, lambda key, message: PlanError(str(job), key, message), warnings, base=str(code))
    assert len(warnings) == 1 and "no module named 'only_there'" in warnings[0]  # the login node may have it
    assert code_dir(spec.program, str(code)) == str(code)
    assert code_dir(spec.program) == os.getcwd()  # a local submission: the folder submitted from
