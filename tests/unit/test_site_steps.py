"""Every srun step of a script runs where the ranks run: per wrapper kind, a golden file of the
script's srun lines (pre-flight and training), and the check that each step carries the same
srun options (the wrapper's own first) and the same words before the interpreter."""
import os
import re

import pytest

from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.spec.yamlio import dump_yaml, read_yaml

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "steps")
WRAPPERS = {
    "none": {"kind": "none"},
    "apptainer": {"kind": "apptainer", "image": "/sw/images/torch.sif", "binds": ["/scratch"]},
    "singularity-run": {"kind": "apptainer", "image": "/sw/images/torch.sif", "executable": "singularity",
                        "gpu": "none", "command": "run"},
    "apptainer-rocm-activate": {"kind": "apptainer", "image": "docker://rocm/pytorch:latest", "gpu": "rocm"},
    "pyxis": {"kind": "pyxis", "image": "nvcr.io#nvidia/pytorch:24.05-py3", "mounts": ["/scratch:/scratch"]},
    "uenv": {"kind": "uenv", "image": "pytorch/v2.6.0:v1", "view": "default"},
    "edf": {"kind": "edf", "environment": "pytorch"},
    "command": {"kind": "command", "argv": ["/sw/bin/site-launch", "--profile=gpu"]},
}


def _script(repo, tmp_path, wrapper: dict) -> str:
    data = read_yaml(repo / "hpcorch/profiles/devcluster.yaml")
    data["launch"] = {"wrapper": wrapper, "srun_options": ["--cpu-bind=cores"], "python": "/sw/venv/bin/python"}
    if wrapper.get("gpu") == "rocm":  # the venv inside the image, activated there
        data["launch"].update(activate="/opt/venv/bin/activate", python="python3")
    path = tmp_path / "p.yaml"
    path.write_text(dump_yaml(data))
    job = load_job(repo / "jobs/gpt-tiny.yaml", ["resources.gpus_per_node=1", "resources.tasks_per_node=1"])
    plan = make_plan(job, load_profile(path), run_dir="/scratch/runs/gpt-tiny", python=None)
    return render_sbatch(plan)


def _steps(text: str) -> list[str]:
    """Each srun step as one line (continuations joined), without its `|| exec recovery` tail."""
    joined = text.replace(" \\\n  ", " ")
    return [ln.split(" || ")[0] for ln in joined.splitlines() if ln.startswith("srun ")]


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
def test_each_srun_step_runs_where_the_ranks_run(repo, tmp_path, kind):
    steps = _steps(_script(repo, tmp_path, WRAPPERS[kind]))
    path = os.path.join(GOLDEN, f"{kind}.srun")
    if os.environ.get("HPCORCH_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write("\n".join(steps) + "\n")
    with open(path) as f:
        assert "\n".join(steps) + "\n" == f.read()
    assert len(steps) == 2  # pre-flight, training
    # What follows hpcorch's own step options (--nodes/--time..., --unbuffered/--output...) up to
    # ' -u -m ' is the launch description: the same in every step.
    owned = re.compile(r"srun( --(nodes|ntasks-per-node|ntasks|kill-on-bad-exit|time|unbuffered)(=[^ ]+)?(?= )"
                       r"| --(output|error) \S+)+")
    launches = [owned.sub("", step).split(" -u -m ")[0] for step in steps]
    assert launches[0] == launches[1], launches
    assert launches[0].startswith(" ") and "--cpu-bind=cores" in launches[0]
    assert launches[0].endswith((" /sw/venv/bin/python", " python3"))


MODULES = {"module_purge": True, "module_use": ["$HOME/mods", "/sw/modules/all"],
           "modules": ["gcc/13", "cuda/12.4"], "prepend": {"PATH": ["$CUDA_HOME/bin"]},
           "variables": {"NCCL_BUFFSIZE": 8388608, "TOOL": "$CUDA_HOME/tool"}, "site_tuned": ["NCCL_BUFFSIZE"]}


def _setup(repo, tmp_path, environment: dict) -> list[str]:
    data = read_yaml(repo / "hpcorch/profiles/devcluster.yaml")
    data["environment"] = environment
    path = tmp_path / "m.yaml"
    path.write_text(dump_yaml(data))
    plan = make_plan(load_job(repo / "jobs/gpt-tiny.yaml"), load_profile(path), run_dir="/scratch/runs/gpt-tiny",
                     python="/usr/bin/python3")
    lines = render_sbatch(plan).splitlines()
    # what follows the shell options and the requeue watch's SIGTERM trap (hpcorch.batch.recovery)
    return lines[lines.index("trap hpcorch_requeue_watch TERM") + 1:lines.index("export HPCORCH_RUN_DIR=/scratch/runs/gpt-tiny")]


def test_modules_purge_use_and_load_in_order_before_what_depends_on_them(repo, tmp_path):
    setup = _setup(repo, tmp_path, MODULES)
    path = os.path.join(GOLDEN, "modules.setup")
    if os.environ.get("HPCORCH_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write("\n".join(setup) + "\n")
    with open(path) as f:
        assert "\n".join(setup) + "\n" == f.read()
    assert setup[:5] == ["module purge", 'module use "${HOME}/mods"', "module use /sw/modules/all",
                         "module load gcc/13", "module load cuda/12.4"]


def test_prepend_modulepath_is_refused_with_the_hint(repo, tmp_path):
    from hpcorch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"environment.prepend.MODULEPATH: takes effect after the module "
                                          r"loads.*use environment.module_use"):
        _setup(repo, tmp_path, {"prepend": {"MODULEPATH": ["/sw/modules"]}, "modules": ["x"]})


INIT = "/usr/share/modules/init/bash"  # Debian's environment-modules


@pytest.mark.skipif(not os.path.exists(INIT), reason="no module system (apt install environment-modules)")
def test_the_setup_runs_on_a_real_module_system(repo, tmp_path):
    """Debian's environment-modules 5: the rendered lines, under the script's set -euo pipefail,
    find modules only through module use, and what depends on a module sees it loaded."""
    import subprocess

    mods = tmp_path / "home" / "mods" / "cuda"
    mods.mkdir(parents=True)
    (mods / "12.4").write_text("#%Module1.0\nsetenv CUDA_HOME /opt/cuda-12.4\n")
    gcc = tmp_path / "home" / "mods" / "gcc"
    gcc.mkdir()
    (gcc / "13").write_text("#%Module1.0\nsetenv GCC_LOADED yes\n")
    setup = _setup(repo, tmp_path, {**MODULES, "module_use": ["$HOME/mods"]})
    script = "\n".join([f". {INIT}", "set -euo pipefail", *setup,
                        'echo "$CUDA_HOME|$GCC_LOADED|$TOOL|${PATH%%:*}|$NCCL_BUFFSIZE"'])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                         env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "/opt/cuda-12.4|yes|/opt/cuda-12.4/tool|/opt/cuda-12.4/bin|8388608"


def test_a_profile_keeps_a_site_tuned_nccl_variable_but_never_logging(repo, tmp_path):
    from hpcorch.errors import ConfigError

    data = read_yaml(repo / "hpcorch/profiles/devcluster.yaml")
    data["environment"] = {"variables": {"NCCL_BUFFSIZE": 8388608}, "site_tuned": ["NCCL_BUFFSIZE"]}
    path = tmp_path / "t.yaml"
    path.write_text(dump_yaml(data))
    plan = make_plan(load_job(repo / "jobs/gpt-tiny.yaml"), load_profile(path), run_dir="/scratch/r")
    assert plan.environment["NCCL_BUFFSIZE"] == "8388608"
    assert any("NCCL_BUFFSIZE=8388608 from profile" in n and "site_tuned" in n for n in plan.notes)
    data["environment"] = {"variables": {"NCCL_BUFFSIZE": 1}}
    path.write_text(dump_yaml(data))
    with pytest.raises(ConfigError, match="environment.site_tuned lists NCCL_BUFFSIZE"):
        load_profile(path)
    data["environment"] = {"variables": {"NCCL_DEBUG": "INFO"}, "site_tuned": ["NCCL_DEBUG"]}
    path.write_text(dump_yaml(data))
    with pytest.raises(ConfigError, match="environment.variables.NCCL_DEBUG: is one of NCCL's debugging"):
        load_profile(path)


def test_an_activation_step_puts_the_environments_python_first(repo, tmp_path):
    """launch.activate with a bare python3: the rendered step sources the script, then finds
    python3 on the PATH it set (a stub venv here), with the step's arguments intact."""
    import subprocess

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\nexport VIRTUAL_ENV="{venv}"\n')
    stub = venv / "bin" / "python3"
    stub.write_text('#!/bin/sh\necho "venv python3 in $VIRTUAL_ENV: $*"\n')
    stub.chmod(0o755)
    data = read_yaml(repo / "hpcorch/profiles/devcluster.yaml")
    data["launch"] = {"activate": str(venv / "bin" / "activate")}
    path = tmp_path / "a.yaml"
    path.write_text(dump_yaml(data))
    plan = make_plan(load_job(repo / "jobs/gpt-tiny.yaml"), load_profile(path), run_dir="/scratch/runs/gpt-tiny")
    assert plan.python == "python3"
    lines = render_sbatch(plan).splitlines()
    train = lines[next(i for i, ln in enumerate(lines) if "training step starts" in ln) + 2]
    command = train.strip().removesuffix(" \\")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin"})
    folder = "/scratch/runs/gpt-tiny/submitit/%j"
    assert out.stdout == (f"venv python3 in {venv}: -u -m hpcorch.batch.nodelaunch {folder} --tasks-per-node 2 "
                          f"--output {folder}/%j_%t_log.out --error {folder}/%j_%t_log.err\n")


def test_the_image_check_is_one_line_either_way(repo, tmp_path):
    from hpcorch import __version__
    from hpcorch.errors import HpcorchError
    from hpcorch.submit.imagecheck import check_image

    job = load_job(repo / "jobs/gpt-tiny.yaml")
    plan = make_plan(job, load_profile("local"), run_dir=tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    line = check_image(plan, env, __version__)
    assert line == f"hpcorch {__version__} imports where the ranks run ({plan.python}, checked on this machine)"
    with pytest.raises(HpcorchError, match=r"hpcorch .* imports where the ranks run .* but 9.9.0 planned the job"):
        check_image(plan, env, "9.9.0")
    plan = make_plan(job, load_profile("local"), run_dir=tmp_path / "run", python="/nonexistent/bin/python3")
    with pytest.raises(HpcorchError, match=r"^launch: /nonexistent/bin/python3 not found on this machine"):
        check_image(plan, env, __version__)
    plan = make_plan(job, load_profile("local"), run_dir=tmp_path / "run", python="/bin/true")
    with pytest.raises(HpcorchError, match=r"^launch: hpcorch does not import where the ranks run"):
        check_image(plan, env, __version__)
