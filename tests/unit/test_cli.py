import json
import subprocess
import sys

import pytest
from conftest import run_cli


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and "hpcorch, version" in out.stdout


def test_python_dash_m_hpcorch_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "hpcorch", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("hpcorch, version"), out.stderr


def test_dry_run_prints_the_golden_script(repo):
    out = run_cli("submit", "jobs/gpt2-124m.yaml", "--profile", "h100-ndr", "--dry-run",
                  "--run-dir", "/scratch/runs/gpt2-124m")
    assert out.returncode == 0, out.stderr
    golden = (repo / "tests/golden/h100-ndr__gpt2-124m.sbatch").read_text()
    assert out.stdout == golden.replace("python3 -u", f"{sys.executable} -u").replace(
        "exec python3 -m", f"exec {sys.executable} -m").replace("\n  python3 -m", f"\n  {sys.executable} -m")


def test_render_is_an_alias(repo):
    args = ["jobs/gpt-tiny.yaml", "-p", "devcluster", "--run-dir", "/r", "--set", "trainer.steps=5"]
    assert run_cli("render", *args).stdout == run_cli("submit", *args, "--dry-run").stdout


def test_profile_path_accepted(repo):
    out = run_cli("submit", "jobs/gpt-tiny.yaml", "-p", repo / "cluster_profiles/devcluster.yaml", "--dry-run")
    assert out.returncode == 0 and "#SBATCH --partition=batch" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    (["submit", "jobs/gpt-1.3b.yaml", "-p", "devcluster", "--dry-run"],
     "jobs/gpt-1.3b.yaml: resources.nodes: asks for 8 nodes"),
    (["submit", "jobs/gpt-tiny.yaml", "--set", "trainer.steps=x", "--dry-run"], "trainer.steps: expected an integer"),
    (["submit", "jobs/nope.yaml", "--dry-run"], "jobs/nope.yaml: cannot read"),
    (["submit", "jobs/gpt-tiny.yaml", "-p", "mars", "--dry-run"], "no such profile"),
    (["profile", "validate", "local", "tests/golden"], "cannot read"),
    (["plan", "jobs/gpt-tiny.yaml", "--set", "resources.cpus_per_task=999"], "resources.cpus_per_task"),
])
def test_errors_exit_2_without_traceback(args, fragment):
    out = run_cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")


def test_bad_yaml_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresources: {nodes: 1\n")
    out = run_cli("submit", bad, "--dry-run")
    assert out.returncode == 2 and "invalid YAML: line" in out.stderr and "Traceback" not in out.stderr


def test_usage_error_exits_2():
    assert run_cli("submit").returncode == 2


def test_profile_commands():
    listing = run_cli("profile", "list", "--json")
    assert listing.returncode == 0 and '"devcluster"' in listing.stdout
    shown = run_cli("profile", "show", "devcluster")
    assert "urgent" in shown.stdout and "leaf1" in shown.stdout
    assert run_cli("profile", "validate", "local", "devcluster", "h100-ndr", "a100-hdr").returncode == 0


def test_plan_json():
    import json

    out = run_cli("plan", "jobs/gpt2-124m.yaml", "-p", "a100-hdr", "--json")
    data = json.loads(out.stdout)
    assert data["world_size"] == 4 and data["parameters"] == 123_587_328
    assert json.loads(run_cli("plan", "gpt-1.3b", "-p", "h100-ndr", "--json").stdout)["total_tokens"] == 41_943_040_000


def test_plan_numbers_for_people():
    out = run_cli("plan", "jobs/gpt2-124m.yaml", "-p", "h100-ndr").stdout
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["parameters"] == "123.6 M" and lines["flops_per_token"] == "854.8 MFLOP"
    assert lines["tokens_per_step"] == "262,144"
    assert lines["total_tokens"] == "1,310,720,000 (1.3 B)" and lines["peak_pflops"] == "3.96 PFLOP/s"


def test_top_level_help_has_whole_one_liners_and_examples():
    out = run_cli("--help").stdout
    assert "..." not in out.split("Commands:")[1].split("Examples:")[0]
    assert "Print the sbatch script for JOB (the same as submit --dry-run)." in out
    assert "Examples:" in out and "hpcorch resume 3 --exclude gpu017" in out


def test_help_everywhere():
    for args in (["--help"], ["submit", "--help"], ["profile", "--help"], ["plan", "--help"]):
        out = run_cli(*args)
        assert out.returncode == 0 and "Usage:" in out.stdout


def test_dry_run_imports_neither_torch_nor_submitit():
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            "try:\n    main(['submit', 'jobs/gpt-tiny.yaml', '-p', 'devcluster', '--dry-run'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'submitit', 'numpy', 'paramiko') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(__import__("conftest").REPO))
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_dry_run_skips_what_it_does_not_use(tmp_path):
    """A cold dry run (whose start is a cost users pay on every try) loads neither the other
    command modules nor the pre-flight's argparse nor socket, and once the job and profile were
    parsed (the user cache) not PyYAML either; the lazy commands still resolve."""
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            "try:\n    main(['submit', 'jobs/gpt-tiny.yaml', '-p', 'devcluster', '--dry-run'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('argparse', 'socket', 'yaml', 'hpcorch.cli.sweep_commands', "
            "'hpcorch.cli.data_commands', 'hpcorch.cli.remote_commands') if m in sys.modules))")
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for loaded in ("['yaml']", "[]"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             cwd=str(__import__("conftest").REPO), env=env)
        assert out.stdout.strip().splitlines()[-1] == loaded, out.stderr
    assert "hpcorch sweep" in run_cli("sweep", "--help").stdout


def test_status_and_ls_import_neither_torch_nor_submitit(tmp_path):
    """Observing a run reads its run directory and asks the scheduler: no torch, no submitit."""
    code = ("import sys\nfrom hpcorch.state.registry import Registry\nfrom hpcorch.cli.main import main\n"
            f"Registry().add('999999999', 'gpt-tiny', 'local', 'local', {str(tmp_path / 'run')!r}, 'job.yaml')\n"
            "for args in (['status', '1'], ['ls'], ['plan', 'jobs/gpt-tiny.yaml']):\n"
            "    try:\n        main(args)\n    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('torch', 'submitit', 'numpy', 'paramiko') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(__import__("conftest").REPO), env={**__import__("os").environ,
                                                                 "HPCORCH_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "STOPPED" in out.stdout and "hpcorch resume 1" in out.stdout


def test_profile_search_path_and_default(tmp_path, repo):
    home, extra = tmp_path / "home", tmp_path / "site"
    (home / "profiles").mkdir(parents=True)
    extra.mkdir()
    mine = (repo / "cluster_profiles/devcluster.yaml").read_text().replace("name: devcluster", "name: mine")
    (home / "profiles" / "mine.yaml").write_text(mine)
    (extra / "local.yaml").write_text((repo / "cluster_profiles/local.yaml").read_text()
                                      .replace("description:", "description: site copy;"))
    env = {"HPCORCH_HOME": str(home), "HPCORCH_PROFILE_PATH": str(extra)}
    listed = run_cli("profile", "list", env=env).stdout
    assert "mine" in listed and "h100-ndr" in listed
    assert "site copy" in run_cli("profile", "show", "local", env=env).stdout  # the search path wins
    out = run_cli("plan", "gpt-tiny", "--json", env={**env, "HPCORCH_PROFILE": "mine"})
    assert out.returncode == 0 and json.loads(out.stdout)["profile"] == "mine", out.stderr
    wrong = run_cli("plan", "gpt-tiny", "-p", "h100", env=env)
    assert wrong.returncode == 2 and "did you mean 'h100-ndr'" in wrong.stderr
    assert "hpcorch/profiles" not in wrong.stderr  # no install paths in messages


def test_shell_completion_offers_profiles_jobs_and_refs(tmp_path):
    def complete(*words):
        env = {"COMP_WORDS": " ".join(("hpcorch",) + words), "COMP_CWORD": str(len(words)),
               "_HPCORCH_COMPLETE": "bash_complete", "HPCORCH_HOME": str(tmp_path)}
        return run_cli(*words[:1], env=env).stdout.split()

    assert "plain,h100-ndr" in complete("plan", "gpt2-124m", "-p", "h1")
    assert {"plain,gpt2-124m", "plain,gpt-tiny"} <= set(complete("plan", "gpt"))
    assert complete("status", "") == []  # an empty registry offers nothing and does not fail
    from hpcorch.state.registry import Registry

    Registry(tmp_path / "registry.sqlite").add("77", "my-run", "local", "local", str(tmp_path / "r"), "j.yaml")
    assert "plain,my-run" in complete("status", "my")
    script = run_cli("completion", "bash")
    assert script.returncode == 0 and "_HPCORCH_COMPLETE" in script.stdout
