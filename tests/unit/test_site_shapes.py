"""Eight real cluster shapes (profiles written from each site's public documentation): each
renders the #SBATCH resource lines and the launch that the site documents for a training job,
and refuses what the site would refuse. The closing table of issue 14 comes from this file."""
import subprocess
from pathlib import Path

import pytest

from hpcorch.errors import PlanError
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile

HERE = Path(__file__).resolve().parents[1]
SHAPES = HERE / "data" / "profiles"
# hpcorch's bookkeeping lines, the same on every site (name, logs, requeue and its signal).
BOOKKEEPING = ("--job-name", "--output", "--error", "--open-mode", "--requeue", "--no-requeue", "--signal")


def _profile(name: str):
    path = SHAPES / f"{name}.yaml"
    return load_profile(path if path.exists() else name)


def _render(repo, profile: str, *overrides: str) -> str:
    """gpt2-124m with ``overrides``, one sequence per rank and step (any world size divides it)."""
    batch = ("trainer.micro_batch=1", "trainer.global_batch=230400")
    job = load_job(repo / "jobs" / "gpt2-124m.yaml", batch + overrides)
    return render_sbatch(make_plan(job, _profile(profile), run_dir="/scratch/runs/x"))


def _resource_lines(text: str) -> set[str]:
    lines = {line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")}
    return {line for line in lines if not line.startswith(BOOKKEEPING)}


def _srun(text: str) -> str:
    return text[text.index("\nsrun "):].replace("\\\n", " ")


# (profile, job overrides, the #SBATCH resource lines the site documents, what the srun line holds)
SHAPE_CASES = {
    # NERSC Perlmutter: -A, -C gpu, -q regular, -N, --ntasks-per-node, -c, --gpus-per-node; no -p.
    "a100-slingshot": (["resources.nodes=2", "resources.cpus_per_task=32"],
                       {"--account=m0000", "--constraint=gpu", "--qos=regular", "--nodes=2",
                        "--ntasks-per-node=4", "--cpus-per-task=32", "--gpus-per-node=4", "--time=12:00:00"},
                       ["--cpu-bind=cores"]),
    # LUMI-G standard-g: whole nodes, 8 GCDs, 8 tasks x 7 cores, CPU masks, Singularity with --rocm.
    "mi250x-slingshot": (["resources.gpus_per_node=8", "resources.cpus_per_task=7"],
                         {"--partition=standard-g", "--account=project_465000000", "--nodes=1",
                          "--ntasks-per-node=8", "--cpus-per-task=7", "--gpus-per-node=8", "--exclusive",
                          "--mem=0", "--time=12:00:00"},
                         ["--cpu-bind=mask_cpu:fe000000000000,", "singularity exec --rocm --bind /pfs,",
                          ".sif python3 -u -m submitit.core._submit"]),
    # IDRIS Jean Zay A100: -C a100, account abc@a100, qos_gpu-t3, --gres=gpu:8, --hint=nomultithread; no -p.
    "a100-qos": (["resources.partition=gpu_p5", "resources.constraint=a100", "resources.gpus_per_node=8",
                  "resources.cpus_per_task=8", "resources.time=20:00:00", "resources.nodes=2"],
                 {"--constraint=a100", "--account=abc@a100", "--qos=qos_gpu-t3", "--nodes=2",
                  "--ntasks-per-node=8", "--cpus-per-task=8", "--gres=gpu:8", "--hint=nomultithread",
                  "--time=20:00:00"},
                 []),
    # CSCS Alps GH200: -p normal, -A, 4 tasks per node, 4 GPUs per node, uenv image and view on srun.
    "gh200-uenv": (["resources.nodes=2", "resources.cpus_per_task=72", "resources.time=6:00:00"],
                   {"--partition=normal", "--account=a-abc00", "--nodes=2", "--ntasks-per-node=4",
                    "--cpus-per-task=72", "--gpus-per-node=4", "--time=06:00:00"},
                   ["--uenv=pytorch/v2.6.0:v1 --view=default", "/user-environment/env/default/bin/python -u"]),
    # AWS p5 cluster: whole instances (--exclusive), no --mem, pyxis container, EFA variables.
    "efa-cloud": (["resources.nodes=2", "resources.gpus_per_node=8", "resources.cpus_per_task=24"],
                  {"--partition=gpu", "--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=24",
                   "--gpus-per-node=8", "--exclusive", "--time=12:00:00"},
                  ["--container-image=nvcr.io#nvidia/pytorch:24.05-py3", "--container-mounts=/fsx"]),
    # University cluster, mixed gpu partition: a typed GRES request picks the A40 nodes.
    "uni-mixed": (["resources.gpus_per_node=a40:2", "resources.cpus_per_task=8", "resources.mem=128G"],
                  {"--partition=gpu", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=8",
                   "--gres=gpu:a40:2", "--mem=131072M", "--time=12:00:00"},
                  []),
    # MIG slices: one rank on one 1g.10gb slice.
    "mig-slices": (["resources.gpus_per_node=1g.10gb:1", "resources.cpus_per_task=8",
                    "trainer.global_batch=16", "trainer.micro_batch=16", "launch.python=/usr/bin/python3"],
                   {"--partition=mig", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=8",
                    "--gres=gpu:1g.10gb:1", "--time=12:00:00"},
                   []),
    # Typed requests only: an untyped job gets the partition's one GPU type written.
    "gres-typed-only": (["resources.cpus_per_task=16"],
                        {"--partition=gpu", "--nodes=1", "--ntasks-per-node=4", "--cpus-per-task=16",
                         "--gres=gpu:a100:4", "--time=12:00:00"},
                        []),
}


@pytest.mark.parametrize("shape", sorted(SHAPE_CASES))
def test_shape_renders_what_the_site_documents(repo, shape):
    overrides, lines, srun_parts = SHAPE_CASES[shape]
    text = _render(repo, shape, *overrides)
    assert _resource_lines(text) == lines, text
    srun = _srun(text)
    for part in srun_parts:
        assert part in srun, srun
    subprocess.run(["bash", "-n"], input=text, text=True, check=True, timeout=30)


def test_fabric_variables_reach_the_script(repo):
    slingshot = _render(repo, "a100-slingshot", "resources.cpus_per_task=32")
    assert "export FI_PROVIDER=cxi\n" in slingshot
    efa = _render(repo, "efa-cloud", "resources.gpus_per_node=8", "resources.cpus_per_task=24")
    assert "export FI_PROVIDER=efa\n" in efa and "export FI_EFA_USE_DEVICE_RDMA=1\n" in efa
    lumi = _render(repo, "mi250x-slingshot", "resources.gpus_per_node=8", "resources.cpus_per_task=7")
    assert "export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3\n" in lumi
    # Values that expand at run time stay double-quoted with only the variable references live.
    assert 'export MIOPEN_USER_DB_PATH="/tmp/${USER}-miopen-cache-${SLURM_JOB_ID}"\n' in lumi
    jean_zay = _render(repo, "a100-qos", "resources.partition=gpu_p5", "resources.constraint=a100",
                       "resources.gpus_per_node=8", "resources.cpus_per_task=8", "resources.time=20:00:00")
    assert "export NCCL_IB_HCA==mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1\n" in jean_zay


@pytest.mark.parametrize("shape, overrides, key, message", [
    ("a100-slingshot", ["resources.qos=debug", "resources.nodes=16", "resources.time=30"],
     "resources.nodes", "QOS 'debug' allows at most 8"),
    ("a100-slingshot", ["resources.constraint=gpu&hbm80g", "resources.nodes=300"],
     "resources.constraint", "has 256 (nid[008000-008255])"),
    ("a100-qos", ["resources.partition=gpu_p5", "resources.constraint=a100", "resources.gpus_per_node=8",
                  "resources.qos=qos_gpu-t4", "resources.time=30:00:00"],
     "resources.qos", "qos_gpu-t4"),
    ("a100-qos", ["resources.partition=gpu_p5", "resources.constraint=a100", "resources.gpus_per_node=8",
                  "resources.time=24:00:00"],
     "resources.time", "20:00:00"),
    ("uni-mixed", ["resources.gpus_per_node=a40:4", "resources.nodes=16"], "resources.nodes", "has 8"),
    ("uni-mixed", ["resources.gpus_per_node=h100:4"], "resources.gpus_per_node", "v100, a40"),
    ("uni-mixed", ["resources.constraint=a40", "resources.nodes=9"], "resources.constraint", "ga[01-08]"),
    ("mig-slices", ["resources.gpus_per_node=1g.10gb:2"], "resources.tasks_per_node", "MIG"),
    ("mig-slices", ["resources.gpus_per_node=1g.10gb:2", "resources.tasks_per_node=1"],
     "resources.gpus_per_node", "MIG"),
    ("gres-typed-only", ["resources.gpus_per_node=h100:4"], "resources.gpus_per_node", "a100"),
    ("mi250x-slingshot", ["resources.gpus_per_node=16"], "resources.gpus_per_node", "8"),
])
def test_shape_refuses_what_the_site_would_refuse(repo, shape, overrides, key, message):
    with pytest.raises(PlanError) as err:
        _render(repo, shape, *overrides)
    text = str(err.value)
    assert f": {key}: " in text and message in text and "\n" not in text, text


@pytest.mark.parametrize("profile, option", [("gh200-uenv", "--uenv=pytorch/v2.6.0:v1 --view=default"),
                                             ("efa-cloud", "--container-image=")])
def test_the_preflight_starts_in_the_same_environment_as_the_ranks(repo, profile, option):
    """Issue 27: these shapes rendered the pre-flight on the bare host (the wrapper's srun
    options only on the training step): every srun step now carries them."""
    text = _render(repo, profile)
    steps = [ln for ln in text.replace(" \\\n  ", " ").splitlines() if ln.startswith("srun ")]
    assert len(steps) == 2 and all(option in step for step in steps), steps
