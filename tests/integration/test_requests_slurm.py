"""Every request style the dev cluster can express, rendered by hpcorch and accepted by the live
Slurm (``sbatch --test-only``): GPU options, memory options, --exclusive, an implicit partition,
a QOS, and typed GRES where the dev cluster's profile declares GPU types."""
import re

import pytest
from slurmhelp import script

from hpcorch.cluster.slurm import SlurmError
from hpcorch.errors import PlanError
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import JobSpec
from hpcorch.spec.profile import ClusterProfile
from hpcorch.spec.schema import build
from hpcorch.spec.yamlio import read_yaml

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def _profile(repo, **top) -> ClusterProfile:
    """The dev cluster's own profile with top-level keys added (its nodes and partitions as they are)."""
    data = read_yaml(repo / "cluster_profiles/devcluster.yaml")
    implicit = top.pop("implicit", False)
    data.update(top)
    if implicit:
        for part in data["partitions"]:
            part["implicit"] = True
    return build(ClusterProfile, data, "devcluster.yaml")


def _job(**resources) -> JobSpec:
    resources = {"nodes": 2, "gpus_per_node": 2, "tasks_per_node": 2, "time": 10, **resources}
    data = {"name": "req", "resources": resources, "trainer": {"global_batch": 12, "micro_batch": 1}}
    return build(JobSpec, data, "job.yaml")


def _accepted(slurm, job, profile, tmp_path, expected: str) -> None:
    text = render_sbatch(make_plan(job, profile, run_dir=tmp_path))
    assert f"#SBATCH {expected}\n" in text, text
    message = slurm.test_only(text)
    assert re.search(r"to start at", message), message


@pytest.mark.parametrize("style, expected", [
    ("gpus-per-node", "--gpus-per-node=2"), ("gres", "--gres=gpu:2"),
    ("gpus", "--gpus=4"), ("gpus-per-task", "--gpus-per-task=1"),
])
def test_gpu_styles_pass_test_only(repo, slurm, tmp_path, style, expected):
    _accepted(slurm, _job(), _profile(repo, requests={"gpus": style}), tmp_path, expected)


@pytest.mark.parametrize("memory, resources, expected", [
    ("mem", {"mem": "2000M"}, "--mem=2000M"),
    ("mem", {"mem": 0}, "--mem=0"),
    ("mem", {"mem_per_gpu": "1000M"}, "--mem-per-gpu=1000M"),
    ("mem-per-gpu", {"mem": "2000M"}, "--mem-per-gpu=1000M"),
    ("whole-node", {}, "--mem=0"),
])
def test_memory_styles_pass_test_only(repo, slurm, tmp_path, memory, resources, expected):
    _accepted(slurm, _job(**resources), _profile(repo, requests={"memory": memory}), tmp_path, expected)


def test_exclusive_passes_test_only(repo, slurm, tmp_path):
    _accepted(slurm, _job(), _profile(repo, requests={"exclusive": True}), tmp_path, "--exclusive")


def test_implicit_partition_lets_slurm_choose(repo, slurm, tmp_path):
    text = render_sbatch(make_plan(_job(), _profile(repo, implicit=True), run_dir=tmp_path))
    assert "--partition" not in text
    assert re.search(r"to start at", slurm.test_only(text))


def test_qos_limits_match_the_live_cluster(repo, slurm, tmp_path):
    """The dev cluster registers its profile's QOS with enforced limits: a job within 'debug'
    passes sbatch --test-only; one over a limit is refused by hpcorch's plan and by Slurm alike."""
    profile = _profile(repo)
    assert profile.qos["debug"].max_nodes == 2
    _accepted(slurm, _job(qos="debug"), profile, tmp_path, "--qos=debug")
    for over, slurm_args in (({"nodes": 3}, ["--nodes=3"]), ({"time": 60}, ["--time=60"]),
                             ({"gpus_per_node": 4, "tasks_per_node": 1, "nodes": 2},
                              ["--nodes=2", "--gpus-per-node=4"])):
        with pytest.raises(PlanError, match="QOS 'debug'"):
            make_plan(_job(qos="debug", **over), profile, run_dir=tmp_path)
        with pytest.raises(SlurmError, match="QOSMax|QOS policy|rejected"):
            slurm.test_only(script("true", "--qos=debug", "--time=10", *slurm_args))
    with pytest.raises(SlurmError):
        slurm.test_only(script("true", "--qos=nosuchqos", "--nodes=1", "--time=1"))


def _gpu_type(profile: ClusterProfile) -> str | None:
    part = profile.partition(None)
    types = [g.spec.gpus.type for g in profile.groups_of(part) if g.spec.gpus.count and g.spec.gpus.type]
    return types[0] if types else None


@pytest.mark.parametrize("style, expected", [("gres", "--gres=gpu:{}:2"), ("gpus-per-node", "--gpus-per-node={}:2")])
def test_typed_gres_passes_test_only(repo, slurm, tmp_path, style, expected):
    profile = _profile(repo, requests={"gpus": style})
    gpu_type = _gpu_type(profile)
    if gpu_type is None:
        pytest.skip("the dev cluster's profile declares no GPU type (node_types.*.gpus.type)")
    nodes = sum(len(g.hosts) for g in profile.groups_of(profile.partition(None)) if g.spec.gpus.type == gpu_type)
    job = _job(nodes=min(2, nodes), gpus_per_node=f"{gpu_type}:2", gpu_type=gpu_type)
    _accepted(slurm, job, profile, tmp_path, expected.format(gpu_type))
    # A type the cluster lacks: hpcorch's plan refuses it, and so does Slurm.
    with pytest.raises(SlurmError, match="rejected"):
        slurm.test_only(script("true", "--nodes=1", "--time=1", "--gres=gpu:nosuchtype:1"))
