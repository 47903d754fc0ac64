"""Run manifests: the code directory's git state, what differs between attempts, and a real
local submission whose second attempt runs edited code (flagged by status, shown by --diff),
plus `hpcorch plot` of that finished run in the terminal and as a PNG."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from trainhelp import REPO, TINY

from hpcorch.batch import manifest
from hpcorch.batch.gitstate import git_state
from hpcorch.observe import manifest as reader
from hpcorch.state.rundir import RunDir
from hpcorch.util.poll import poll_until

pytestmark = pytest.mark.timeout(300)
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def code_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "model_tweak.py").write_text("SCALE = 1.0\n")
    (path / ".gitignore").write_text("*.log\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "first")
    return path


# ----- the git state ------------------------------------------------------------------------------
def test_patch_holds_staged_unstaged_and_untracked_changes_and_applies(tmp_path):
    repo = code_repo(tmp_path / "code")
    (repo / "model_tweak.py").write_text("SCALE = 2.0\n")                 # unstaged
    (repo / "staged.py").write_text("A = 1\n")
    git(repo, "add", "staged.py")                                          # staged
    (repo / "notes.txt").write_text("no newline at the end")               # untracked
    (repo / "ignored.log").write_text("ignored\n")                         # ignored: not in the patch
    (repo / "runs" / "job").mkdir(parents=True)
    (repo / "runs" / "job" / "metrics.jsonl").write_text("{}\n")           # the run directory: left out
    facts, patch = git_state(repo, exclude=[repo / "runs" / "job"])
    assert facts["commit"] == git(repo, "rev-parse", "HEAD").strip() and facts["branch"] == "main"
    assert facts["dirty"] and facts["untracked"] == 1 and not facts["patch_truncated"]
    assert facts["patch_sha256"] == manifest.sha256(patch)
    text = patch.decode()
    assert "+SCALE = 2.0" in text and "+A = 1" in text and "b/notes.txt" in text
    assert "ignored.log" not in text and "metrics.jsonl" not in text
    # The patch re-creates the working tree on a clean checkout of the commit.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    (tmp_path / "p.patch").write_bytes(patch)
    git(clone, "apply", str(tmp_path / "p.patch"))
    for name in ("model_tweak.py", "staged.py", "notes.txt"):
        assert (clone / name).read_text() == (repo / name).read_text()


def test_git_state_outside_a_repository_and_caps(tmp_path):
    assert git_state(tmp_path) == ({"repo": None}, b"")
    repo = code_repo(tmp_path / "code")
    git(repo, "remote", "add", "origin", "https://me:s3cret@example.org/x.git")
    (repo / "big.txt").write_text("x\n" * 5000)
    facts, patch = git_state(repo, max_patch=1000)
    assert facts["origin"] == "https://example.org/x.git"
    assert facts["patch_truncated"] and b"Binary files /dev/null and b/big.txt differ (too large: 10000 bytes" in patch
    # A binary file is never read whole: named with its size and time, so a change still shows.
    (repo / "big.txt").unlink()
    (repo / "weights.bin").write_bytes(b"\0" * 500)
    _, binary = git_state(repo, max_patch=100_000)
    assert b"b/weights.bin differ (binary: 500 bytes, mtime " in binary
    # Another run's directory inside the code folder is no code change.
    other = repo / "runs" / "old"
    other.mkdir(parents=True)
    for name in ("job.yaml", "events.jsonl", "metrics.jsonl"):
        (other / name).write_text("{}\n")
    _, without = git_state(repo, max_patch=100_000)
    assert without == binary
    (repo / "weights.bin").unlink()
    for i in range(5):
        (repo / f"part{i}.txt").write_text(f"{i}\n" * 150)
    facts, patch = git_state(repo, max_patch=1000)
    assert facts["patch_truncated"] and len(patch) < 1100 and b"patch cut at 1000 bytes" in patch
    clean, nothing = git_state(code_repo(tmp_path / "clean"))
    assert not clean["dirty"] and nothing == b"" and clean["patch_sha256"] is None
    git(tmp_path / "clean", "checkout", "-q", "--detach")
    detached, _ = git_state(tmp_path / "clean")
    assert detached["branch"] is None and detached["commit"] == clean["commit"]
    late, _ = git_state(repo, budget_s=0.0)
    assert "longer than" in late["incomplete"]


# ----- comparing attempts -------------------------------------------------------------------------
def _fake(run: RunDir, attempt: int, **changes) -> None:
    base = {"job_id": "7", "git": {"commit": "a" * 40, "patch_sha256": None}, "python": "3.11.7",
            "versions": {"torch": "2.4.0", "cuda": "12.1", "nccl": "2.20.5", "slurm": "24.05", "hpcorch": "0.1"},
            "packages": {"numpy": "1.26.4", "torch": "2.4.0"}, "gpu": None,
            "script_sha256": "s" * 64, "job_sha256": "j" * 64, "profile_sha256": "p" * 64, "nodes": "n1"}
    for key, value in changes.items():
        base[key] = value
    run.manifests.mkdir(parents=True, exist_ok=True)
    run.manifest_file(attempt).write_text(json.dumps(base))


def test_differences_name_what_matters_and_ignore_the_rest(tmp_path):
    run = RunDir(tmp_path / "run")
    _fake(run, 0)
    _fake(run, 1, nodes="n2", job_id="8")  # other nodes, another job id: not a warning
    assert reader.differences(run) == []
    _fake(run, 2, packages={"numpy": "2.0.1", "torch": "2.4.0", "wandb": "0.31.0"},
          versions={"torch": "2.4.0", "cuda": "12.4", "nccl": "2.20.5", "slurm": "24.05", "hpcorch": "0.1"})
    _fake(run, 3, git={"commit": "b" * 40, "patch_sha256": None})
    warnings = reader.differences(run)
    assert len(warnings) == 2
    assert warnings[0].startswith("attempt 2") and "numpy 1.26.4 -> 2.0.1" in warnings[0]
    assert "+wandb 0.31.0" in warnings[0] and "versions.cuda 12.1 -> 12.4" in warnings[0]
    assert warnings[1].startswith("attempt 3") and "commit aaaaaaaaaaaa -> bbbbbbbbbbbb" in warnings[1]
    assert manifest.attempt_numbers(run) == [0, 1, 2, 3] and manifest.next_attempt(run) == 4


def test_cold_cli_imports_no_plotting_nor_logging_packages():
    code = ("import sys, hpcorch.cli.main, hpcorch.service, hpcorch.batch.manifest, hpcorch.observe.plot, hpcorch.cli.observe_commands\n"
            "bad = [m for m in ('torch', 'plotext', 'matplotlib', 'tensorboardX', 'wandb') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ----- a real local submission: edit the code between two attempts ---------------------------------
@pytest.fixture(scope="module")
def edited_run(tmp_path_factory):
    """Submit with the local profile from a git repository, edit a tracked file while attempt 0
    trains, preempt it (SIGUSR2 to the ranks): attempt 1 runs the edited code."""
    base = tmp_path_factory.mktemp("edited")
    code, run, home = code_repo(base / "code"), base / "run", base / "home"
    env = {**os.environ, "HPCORCH_HOME": str(home), "PYTHONPATH": str(REPO), "HPCORCH_STEP_DELAY_S": "0.1",
           "HPCORCH_PROFILE": "local"}
    sets = [a for s in TINY + ["trainer.eval_interval=6"] for a in ("--set", s)]
    cli = [sys.executable, "-m", "hpcorch.cli.main"]
    out = subprocess.run([*cli, "submit", str(REPO / "jobs/gpt-tiny.yaml"), "--run-dir", str(run), *sets, "--no-wait"],
                         cwd=code, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    from hpcorch.state.registry import Registry

    entry = Registry(home / "registry.sqlite").all()[-1]
    controller = psutil.Process(int(entry.job_id))
    try:
        poll_until(lambda: (json.loads((run / "progress.json").read_text()).get("step", 0) >= 4) or None
                   if (run / "progress.json").exists() else None, 120, what="step 4")
        (code / "model_tweak.py").write_text("SCALE = 1.5  # tuned between attempts\n")
        for rank in controller.children():  # what a scheduler does on preemption
            rank.send_signal(signal.SIGUSR2)
        poll_until(lambda: (run / "summary.json").exists() or None, 180, what=f"{run}/summary.json")
        controller.wait(timeout=60)
    finally:
        for proc in ([controller] + controller.children(recursive=True)) if controller.is_running() else []:
            proc.kill()
    return {"run": run, "code": code, "env": env, "key": str(entry.key), "cli": cli}


def _cli(r, *args):
    return subprocess.run([*r["cli"], *args], cwd=r["code"], env=r["env"], capture_output=True, text=True, timeout=120)


def test_local_run_manifests_have_every_field(edited_run):
    run = RunDir(edited_run["run"])
    assert manifest.attempt_numbers(run) == [0, 1]
    first = reader.load(run, 0)
    git_facts = first["git"]
    assert git_facts["repo"] == str(edited_run["code"].resolve()) and len(git_facts["commit"]) == 40
    assert git_facts["branch"] == "main" and git_facts["dirty"] is False
    assert first["packages"]["torch"] == first["versions"]["torch"] and "click" in first["packages"]
    assert first["python"] == ".".join(map(str, sys.version_info[:3]))
    assert first["scheduler"] == "local" and first["profile"] == "local" and first["nodes"]
    for key in ("script_sha256", "job_sha256", "profile_sha256"):
        assert len(first[key]) == 64, key
    assert first["collect_s"] < 5
    second = reader.load(run, 1)
    assert second["git"]["dirty"] and second["git"]["commit"] == git_facts["commit"]
    assert b"+SCALE = 1.5" in run.manifest_file(1, "patch").read_bytes()


def test_status_flags_the_attempt_that_ran_edited_code(edited_run):
    out = _cli(edited_run, "status", edited_run["key"], "--json")
    assert out.returncode == 0, out.stderr
    warnings = json.loads(out.stdout)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("attempt 1")
    assert "uncommitted changes differ (model_tweak.py)" in warnings[0]


def test_manifest_diff_shows_the_edit(edited_run):
    out = _cli(edited_run, "manifest", edited_run["key"], "--diff", "0", "1")
    assert out.returncode == 0, out.stderr
    assert "code: uncommitted changes differ (model_tweak.py)" in out.stdout
    assert "== model_tweak.py: changed in attempt 1, not in attempt 0:" in out.stdout
    assert "-SCALE = 1.0" in out.stdout and "+SCALE = 1.5  # tuned between attempts" in out.stdout
    listed = _cli(edited_run, "manifest", str(edited_run["run"]))
    assert "attempt 0: job" in listed.stdout and "attempt 1: job" in listed.stdout and "warning: attempt 1" in listed.stdout
    as_json = json.loads(_cli(edited_run, "manifest", edited_run["key"], "--diff", "0", "1", "--json").stdout)
    assert as_json["changes"] == ["code: uncommitted changes differ (model_tweak.py)"]
    missing = _cli(edited_run, "manifest", edited_run["key"], "--diff", "0", "7")
    assert missing.returncode == 2 and "no manifest of attempt 7" in missing.stderr and "Traceback" not in missing.stderr


def test_plot_in_the_terminal_names_the_series_and_marks_the_restart(edited_run):
    out = _cli(edited_run, "plot", edited_run["key"], "--width", "120", "--height", "36")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\x1b[" not in text  # not a terminal: no colour codes
    head = text.splitlines()[0]
    assert head.startswith("gpt-tiny: steps 1-24") and "1 restart (R1 resumed at step" in head
    for name in ("loss", "val loss", "learning rate", "lr", "tokens/s", "goodput"):
        assert name in text, name
    assert text.count("R1") >= 1 + 4  # the headline and each of the four panels
    assert len(text.splitlines()) >= 30 and max(map(len, text.splitlines())) <= 120
    data = json.loads(_cli(edited_run, "plot", edited_run["key"], "--json").stdout)
    assert data["steps"] == list(range(1, 25)) and len(data["restarts"]) == 1
    assert data["val_steps"] == [6, 12, 18, 24] and all(0 < g <= 1 for g in data["goodput"])
    # the headline's figure is the job's, as `hpcorch status` accounts it; the curve's last
    # point leaves out only what came after the last step
    assert 0 < data["job_goodput"] <= data["goodput"][-1] and f"goodput {data['job_goodput'] * 100:.1f}%" in head


def test_plot_png_has_the_expected_size(edited_run, tmp_path):
    from PIL import Image

    target = tmp_path / "curves.png"
    out = _cli(edited_run, "plot", edited_run["key"], "--png", str(target))
    assert out.returncode == 0, out.stderr
    with Image.open(target) as image:
        assert image.format == "PNG" and image.size == (1200, 800)
        colours = image.convert("RGB").getcolors(1 << 20)
    assert len(colours) > 50  # drawn, not blank


@pytest.mark.parametrize("where, expected", [("missing/curves.png", "No such file or directory"),
                                             ("curves.weird", "Format 'weird' is not supported")])
def test_a_png_that_cannot_be_written_is_one_line(edited_run, tmp_path, where, expected):
    out = _cli(edited_run, "plot", edited_run["key"], "--png", str(tmp_path / where))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: --png {tmp_path / where}: ") and expected in out.stderr
    assert out.stderr.count("\n") == 1


def test_plot_draws_around_records_it_cannot_plot(tmp_path):
    """A diverged step's NaN or inf, a null or string loss, a step that is ``true``, a restart
    without a step and a job file that is a list: gaps, never a traceback (headline, terminal, PNG)."""
    from hpcorch.observe import plot

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    records = [{"step": 1, "loss": 2.0, "lr": 1e-3, "time": 10.0, "step_time_s": 1.0},
               {"step": 2, "loss": float("nan"), "lr": "x", "tokens_per_s": float("inf"), "time": "late",
                "step_time_s": 1.0, "val_loss": "bad"},
               {"step": True, "loss": 9.0},
               {"step": 3, "loss": None, "lr": 1e-3, "time": 12.0, "step_time_s": "slow"}]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    run.events.write_text("".join(json.dumps(e) + "\n" for e in (
        {"event": "process_start", "time": 8.0}, {"event": "process_start", "time": "x", "step": None})))
    run.job_file.write_text("- not a mapping\n")
    c = plot.plot_curves(str(run.root))
    assert c.steps == [1, 2, 3] and c.loss == [2.0, None, None] and c.val_loss == [] and c.restarts[0]["step"] == 0
    assert "loss 2.0000" in plot.headline(c) and json.dumps(c.as_dict(), allow_nan=False)
    assert "loss" in plot.terminal(c, 100, 30, color=False)
    if __import__("importlib").util.find_spec("matplotlib"):
        assert plot.png(c, tmp_path / "c.png").stat().st_size > 0


def test_untracked_file_with_a_non_utf8_name_is_in_the_patch(tmp_path):
    """File names are bytes: git lists them as they are, and the patch names them so (a
    UnicodeDecodeError took the manifest down); ``git apply`` recreates the file."""
    repo = code_repo(tmp_path / "code")
    name = b"tweak\xff.py"
    try:
        (repo / os.fsdecode(name)).write_text("X = 1\n")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    state, patch = git_state(repo)
    assert state["untracked"] == 1 and b"+++ b/" + name in patch
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    subprocess.run(["git", "apply", "-"], cwd=clone, input=patch, check=True)
    assert (clone / os.fsdecode(name)).read_text() == "X = 1\n"
