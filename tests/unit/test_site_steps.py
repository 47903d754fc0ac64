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
                        "gpu": "none"},
    "pyxis": {"kind": "pyxis", "image": "nvcr.io#nvidia/pytorch:24.05-py3", "mounts": ["/scratch:/scratch"]},
    "uenv": {"kind": "uenv", "image": "pytorch/v2.6.0:v1", "view": "default"},
    "edf": {"kind": "edf", "environment": "pytorch"},
    "command": {"kind": "command", "argv": ["/sw/bin/site-launch", "--profile=gpu"]},
}


def _script(repo, tmp_path, wrapper: dict) -> str:
    data = read_yaml(repo / "hpcorch/profiles/devcluster.yaml")
    data["launch"] = {"wrapper": wrapper, "srun_options": ["--cpu-bind=cores"], "python": "/sw/venv/bin/python"}
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
    assert launches[0].endswith(" /sw/venv/bin/python")
