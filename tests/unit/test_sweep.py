"""Sweep points without a cluster: grid/zip/list/sample expansion and naming, a bad value named
by its point and key before anything is submitted, one array per resource shape, split above
MaxArraySize, and the dry run's scripts and table."""
import pytest
from conftest import run_cli

from hpcorch.errors import ConfigError
from hpcorch.spec.sweep import SweepAxes, expand, varying_keys

LR, SEED = "trainer.optimizer.lr", "trainer.seed"


def test_grid_is_the_cross_product_named_by_what_varies():
    points = expand(SweepAxes(grid=[f"{LR}=1e-3,3e-3", f"{SEED}=1,2,3"]))
    assert [p.params for p in points][:2] == [{LR: "1e-3", SEED: "1"}, {LR: "1e-3", SEED: "2"}]
    assert len(points) == 6 and points[5].name == "005-lr=3e-3-seed=3"
    assert points[5].overrides() == [f"{LR}=3e-3", f"{SEED}=3"]
    assert varying_keys(points) == [LR, SEED]


def test_zip_takes_lists_in_step_and_crosses_the_grid():
    points = expand(SweepAxes(zip=["trainer.model.width=32,64", "trainer.model.heads=2,4"], grid=[f"{SEED}=1,2"]))
    assert [(p.params["trainer.model.width"], p.params["trainer.model.heads"], p.params[SEED]) for p in points] == [
        ("32", "2", "1"), ("32", "2", "2"), ("64", "4", "1"), ("64", "4", "2")]
    with pytest.raises(ConfigError, match="--zip: trainer.model.width: lists taken in step must be as long"):
        expand(SweepAxes(zip=["trainer.model.width=32,64", "trainer.model.heads=2"]))


def test_list_file_one_point_per_line(tmp_path):
    f = tmp_path / "points.txt"
    f.write_text(f"# lr and seed\n{LR}=1e-3 {SEED}=1\n\n{LR}='2e-3'   # quoted\n")
    points = expand(SweepAxes(list_file=str(f)))
    assert [p.params for p in points] == [{LR: "1e-3", SEED: "1"}, {LR: "2e-3"}]
    f.write_text("trainer.seed\n")
    with pytest.raises(ConfigError, match=r"points.txt, line 1: trainer.seed: expected KEY=VALUE"):
        expand(SweepAxes(list_file=str(f)))


def test_samples_are_drawn_from_the_seed():
    axes = SweepAxes(sample=[f"{LR}=loguniform:1e-4,1e-2", f"{SEED}=int:1,100", "trainer.model.width=choice:32,64"],
                     samples=5, seed=7)
    first, again = expand(axes), expand(axes)
    assert [p.params for p in first] == [p.params for p in again] and len(first) == 5
    assert all(1e-4 <= float(p.params[LR]) <= 1e-2 and 1 <= int(p.params[SEED]) <= 100 for p in first)
    axes.seed = 8
    assert [p.params for p in expand(axes)] != [p.params for p in first]
    for bad, message in [(f"{LR}=loguniform:0,1", "both above 0"), (f"{LR}=normal:1,2", "KIND one of"),
                         (f"{LR}=uniform:x,2", "two numbers")]:
        with pytest.raises(ConfigError, match=message):
            expand(SweepAxes(sample=[bad], samples=2))


@pytest.mark.parametrize("axes, message", [
    (SweepAxes(), "no points"),
    (SweepAxes(grid=["lr"]), "--grid: lr: expected KEY=V1,V2"),
    (SweepAxes(grid=[f"{LR}=1,,2"]), "an empty value"),
    (SweepAxes(grid=[f"{SEED}=1,2"], zip=[f"{SEED}=3,4"]), "set by two of"),
])
def test_bad_axes_are_one_line(axes, message):
    with pytest.raises(ConfigError, match=message):
        expand(axes)


def test_a_bad_value_names_its_point_and_key_before_anything_is_submitted(tmp_path):
    out = run_cli("sweep", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--root", tmp_path / "s",
                  "--grid", f"{LR}=1e-3,fast", "--grid", f"{SEED}=1,2")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: sweep point 2 (002-lr=fast-seed=1): trainer.optimizer.lr: expected a number, " \
                                 "got 'fast'"
    assert not (tmp_path / "s").exists()


def test_dry_run_one_array_per_resource_shape_split_at_max_array_size(tmp_path):
    from hpcorch.service.sweep import plan_sweep, point_table, render_sweep

    axes = SweepAxes(grid=["resources.nodes=1,2", f"{SEED}=1,2,3"])
    sp = plan_sweep("jobs/gpt-tiny.yaml", "devcluster", axes, "shapes", max_parallel=2,
                    overrides=["trainer.global_batch=64"], root=str(tmp_path / "shapes"))
    assert [len(g) for g in sp.shapes()] == [3, 3]
    scripts = render_sweep(sp)
    assert len(scripts) == 2 and "#SBATCH --nodes=1\n" in scripts[0] and "#SBATCH --nodes=2\n" in scripts[1]
    assert all("#SBATCH --array=0-2%2\n" in s and "#SBATCH --hold\n" in s for s in scripts)
    split = render_sweep(sp, max_array_size=2)
    assert [s.count("#SBATCH --array=0-1%2") + s.count("#SBATCH --array=0-0%2") for s in split] == [1, 1, 1, 1]
    assert "export HPCORCH_ARRAY_OFFSET=2\n" in split[1]
    assert [r["array"] for r in point_table(sp)] == [0, 0, 0, 1, 1, 1]
    # Each point's own script names its rank logs by the array task (A_i), as submitit does.
    assert "submitit/%A_%a/%A_%a_%t_log.out" in sp.points[0].script
    assert not (tmp_path / "shapes").exists()  # a dry run writes nothing


def test_cli_dry_run_prints_scripts_and_table(tmp_path):
    out = run_cli("sweep", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--root", tmp_path / "s", "--name", "s",
                  "--grid", f"{SEED}=1,2", "--max-parallel", "1", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("#SBATCH --array=0-1%1\n") == 1 and "#SBATCH --job-name=s\n" in out.stdout
    assert "000-seed=1" in out.stdout and "001-seed=2" in out.stdout
    assert run_cli("sweep", "status", "nope").stderr.startswith("error: no sweep named 'nope'")


def test_check_asks_sbatch_test_only_per_array_and_a_refusal_is_one_line(tmp_path, fake_slurm):
    """--check against the fake's sbatch: each array's script without its hold, Slurm's answer
    printed; a refusal is one line, exit 2; nothing is written or submitted either way."""
    env = {**fake_slurm.env, "HPCORCH_HOME": str(tmp_path / "home")}
    args = ["sweep", "gpt-tiny", "-p", "devcluster", "--root", tmp_path / "s", "--name", "s", "--grid",
            f"{SEED}=1,2", "--grid", "resources.nodes=1,2", "--set", "trainer.global_batch=64", "--check"]
    ok = run_cli(*args, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("to start at") == 2, ok.stdout  # two shapes: two arrays, two answers
    calls = fake_slurm.calls("sbatch")
    assert len(calls) == 2 and all("--test-only" in c for c in calls)
    fake_slurm.answer("sbatch --test-only*", stderr="sbatch: error: Batch job submission failed: Requested node "
                                                    "configuration is not available\n", code=1)
    no = run_cli(*args, env=env)
    assert no.returncode == 2 and "Traceback" not in no.stderr
    assert no.stderr.strip() == "error: sbatch --test-only rejected the script: sbatch: error: Batch job submission " \
                                "failed: Requested node configuration is not available", no.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "home" / "registry.sqlite").exists()


def _fake_sweep(root):
    """A sweep folder as a submission leaves it, with two points that trained a few steps."""
    import json

    points = []
    for i, lr in enumerate(("1e-3", "3e-3")):
        run = root / f"00{i}-lr={lr}"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 5.0 - s * float(lr) * 100, "lr": float(lr), "tokens_per_s": 1000.0 + i,
                        **({"val_loss": 4.0} if s == 4 else {})}) + "\n" for s in range(1, 5)))
        points.append({"index": i, "name": run.name, "params": {LR: lr}, "run_dir": str(run), "shape": []})
    (root / "sweep.json").write_text(json.dumps({"name": "fake", "keys": [LR], "points": points, "arrays": []}))


def test_plot_overlays_the_points_labelled_by_what_differs(tmp_path):
    import json

    _fake_sweep(tmp_path / "fake")
    out = run_cli("plot", tmp_path / "fake", "--json")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert [r["label"] for r in found["runs"]] == ["lr=1e-3", "lr=3e-3"] and found["runs"][1]["val_loss"] == [4.0]
    out = run_cli("plot", tmp_path / "fake", "--width", "100", "--height", "30")
    assert out.returncode == 0 and out.stdout.startswith("fake: 2 runs") and "lr=3e-3" in out.stdout, out.stderr


def test_remote_sweep_options_are_refused_in_one_line_before_connecting(tmp_path):
    """``--code`` needs a sweep that goes to a login node; ``--remote`` needs a profile with login:."""
    from conftest import run_cli

    args = ["sweep", "jobs/gpt-tiny.yaml", "-p", "local", "--grid", "trainer.seed=1,2", "--root", tmp_path / "s"]
    out = run_cli(*args, "--code", tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--code syncs a folder to the login node: it needs --remote" in out.stderr
    out = run_cli(*args, "--remote")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "login: expected a login: section" in out.stderr
    assert not (tmp_path / "s").exists()


def test_a_remote_sweeps_status_goes_to_its_login_node_without_torch(tmp_path):
    """``sweep status NAME`` of a sweep submitted with --remote asks the login node its record
    names (here one that refuses the connection: one line), importing neither torch nor submitit."""
    import os
    import socket
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "ssh_config").write_text(f"Host gone\n  HostName 127.0.0.1\n  Port {port}\n")
    (tmp_path / "gone.yaml").write_text("name: gone\nscheduler: slurm\nlogin: {host: gone}\n"
                                        "node_types: {n: {cpus: 4, memory_mb: 1000}}\n"
                                        "partitions: [{name: q, nodes: n1, node_type: n}]\n")
    (tmp_path / "home" / "remote-sweeps").mkdir(parents=True)
    (tmp_path / "home" / "remote-sweeps" / "sw.json").write_text(
        f'{{"name": "sw", "profile": "{tmp_path / "gone.yaml"}", "host": "gone", "root": "/r"}}')
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            "try:\n    main(['sweep', 'status', 'sw'])\nexcept SystemExit as exc:\n    print('exit', exc.code)\n"
            "print(sorted(m for m in ('torch', 'submitit', 'numpy') if m in sys.modules))")
    env = {**os.environ, "HPCORCH_HOME": str(tmp_path / "home"), "HPCORCH_SSH_CONFIG": str(tmp_path / "ssh_config")}
    env.pop("SSH_AUTH_SOCK", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO),
                         env=env, start_new_session=True)
    assert out.stdout.strip().splitlines()[-2:] == ["exit 2", "[]"], out.stdout + out.stderr
    assert f"127.0.0.1:{port} refused the connection" in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_ls_lists_the_jobs_beside_a_damaged_remote_sweep_record(tmp_path):
    """One bad record file in remote-sweeps/ is that sweep's problem (its own commands say so):
    `hpcorch ls` still lists every job."""
    import json
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    (home / "remote-sweeps").mkdir(parents=True)
    (home / "remote-sweeps" / "sw.json").write_text("{not json")
    code = ("from hpcorch.state.registry import Registry\n"
            f"Registry().add('999999999', 'sw/000-seed=1', 'local', 'local', {str(tmp_path / 'sw' / '000')!r}, 'job.yaml')\n"
            "from hpcorch.cli.main import main\nmain(['ls', '--json'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HPCORCH_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert [row["name"] for row in json.loads(out.stdout)] == ["sw/000-seed=1"]
