"""Plans refuse what the site refuses: partition and QOS limits (each message names the limit
as Slurm spells it), one rank per GPU, CPUs counted as Slurm counts them, MIG's default GRES
type, and every independent error of one job in one run (one line each)."""
import copy
import os
import subprocess
import sys

import pytest

from hpcorch.errors import ConfigError, PlanError, PlanErrors
from hpcorch.plan.plan import make_plan
from hpcorch.spec.job import JobSpec, Resources
from hpcorch.spec.profile import ClusterProfile
from hpcorch.spec.schema import build
from hpcorch.spec.yamlio import dump_yaml

PROFILE = {
    "name": "qsite", "scheduler": "slurm",
    "node_types": {
        "gpu": {"cpus": 64, "threads_per_core": 2, "memory_mb": 256000,
                "gpus": {"count": 4, "model": "A100", "type": "a100", "memory_gb": 80}},
        "mig": {"cpus": 32, "memory_mb": 128000, "gpus": {"count": 7, "mig": "1g.10gb", "memory_gb": 10}},
    },
    "partitions": [
        {"name": "gpu", "nodes": "g[01-16]", "node_type": "gpu", "default": True, "max_time": "24:00:00",
         "min_nodes": 2, "max_nodes": 8, "qos": ["normal", "big"]},
        {"name": "debug", "nodes": "g[01-16]", "node_type": "gpu", "max_time": "30", "max_nodes": 2},
        {"name": "mig", "nodes": "m[01-02]", "node_type": "mig"},
    ],
    "qos": {"normal": {"max_time": "12:00:00", "max_nodes": 4},
            "big": {"min_nodes": 4, "min_time": "1:00:00", "accounts": ["bigproj"]}},
    "defaults": {"qos": "normal"},
}


def _profile(**node_changes) -> ClusterProfile:
    data = copy.deepcopy(PROFILE)
    data["node_types"]["gpu"].update(node_changes)
    return build(ClusterProfile, data, "qsite.yaml")


def _job(**resources) -> JobSpec:
    resources = {"nodes": 2, "gpus_per_node": 4, "tasks_per_node": 4, "cpus_per_task": 8, "time": "1:00:00",
                 **resources}
    batch = Resources(**resources).world_size
    return build(JobSpec, {"name": "j", "resources": resources,
                           "trainer": {"global_batch": batch, "micro_batch": 1}}, "job.yaml")


def _plan(job, profile=None):
    return make_plan(job, profile or _profile(), run_dir="/scratch/runs/j", source="job.yaml", python="python3")


def _errors(job, profile=None) -> list[str]:
    with pytest.raises(PlanError) as info:
        _plan(job, profile)
    lines = str(info.value).splitlines()
    assert all(line.startswith("job.yaml: ") for line in lines), lines
    return lines


@pytest.mark.parametrize("resources, expected", [
    ({"nodes": 1}, "resources.nodes: asks for 1 node, but partition 'gpu' takes at least 2 (MinNodes)"),
    ({"nodes": 10, "qos": "big", "account": "bigproj"},
     "resources.nodes: asks for 10 nodes, but partition 'gpu' allows at most 8 (MaxNodes)"),
    ({"time": "2-00:00:00", "qos": "big", "account": "bigproj", "nodes": 4},
     "resources.time: asks for 2-00:00:00, but partition 'gpu' allows at most 1-00:00:00 (MaxTime)"),
    ({"partition": "debug", "nodes": 3, "time": "20"},
     "resources.nodes: asks for 3 nodes, but partition 'debug' allows at most 2 (MaxNodes)"),
    ({"nodes": 6}, "resources.nodes: asks for 6 nodes, but QOS 'normal' (profile 'qsite''s defaults.qos) "
                   "allows at most 4 (MaxTRESPerJob=node)"),
    ({"time": "13:00:00"}, "resources.time: asks for 13:00:00, but QOS 'normal' (profile 'qsite''s "
                           "defaults.qos) allows at most 12:00:00 (MaxWall)"),
    ({"qos": "big", "account": "bigproj"}, "resources.nodes: asks for 2 nodes, but QOS 'big' takes at least 4 "
                                           "(MinTRESPerJob=node)"),
    ({"qos": "big", "account": "bigproj", "nodes": 4, "time": "30"},
     "resources.time: asks for 00:30:00, but QOS 'big' takes at least 01:00:00 (the profile's min_time)"),
    ({"qos": "big", "nodes": 4, "account": "other"},
     "resources.account: QOS 'big' is only for accounts bigproj; got 'other'"),
    ({"tasks_per_node": 8, "cpus_per_task": 4},
     "resources.tasks_per_node: expected at most 4 (one rank per GPU, resources.gpus_per_node), got 8: "
     "NCCL refuses two ranks on one GPU"),
])
def test_each_site_limit_is_refused_naming_it(resources, expected):
    assert _errors(_job(**resources)) == [f"job.yaml: {expected}"]


def test_fewer_ranks_than_gpus_is_a_warning():
    plan = _plan(_job(tasks_per_node=2))
    assert any("2 GPU(s) per node sit idle; set tasks_per_node to 4" in w for w in plan.warnings)


def test_all_independent_errors_of_a_job_in_one_run(tmp_path):
    job = _job(nodes=1, time="13:00:00", tasks_per_node=8, cpus_per_task=4)
    lines = _errors(job)
    assert lines == [
        "job.yaml: resources.nodes: asks for 1 node, but partition 'gpu' takes at least 2 (MinNodes)",
        "job.yaml: resources.tasks_per_node: expected at most 4 (one rank per GPU, resources.gpus_per_node), "
        "got 8: NCCL refuses two ranks on one GPU",
        "job.yaml: resources.time: asks for 13:00:00, but QOS 'normal' (profile 'qsite''s defaults.qos) allows "
        "at most 12:00:00 (MaxWall)",
    ]
    with pytest.raises(PlanErrors) as info:
        _plan(job)
    assert info.value.key == "resources.nodes" and len(info.value.errors) == 3
    # The CLI: each its own `error:` line, exit 2.
    (tmp_path / "p.yaml").write_text(dump_yaml(PROFILE))
    (tmp_path / "j.yaml").write_text(dump_yaml({"name": "j", "resources": {
        "nodes": 1, "gpus_per_node": 4, "tasks_per_node": 8, "cpus_per_task": 4, "time": "13:00:00"},
        "trainer": {"global_batch": 8, "micro_batch": 1}}))
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", "plan", str(tmp_path / "j.yaml"), "-p",
                          str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HPCORCH_HOME": str(tmp_path / "home")})
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert out.returncode == 2 and len(errors) == 3, out.stderr


@pytest.mark.parametrize("changes, cpus_per_task, ok", [
    ({}, 16, True),                                   # 64 threads, Slurm counts threads: 4 x 16
    ({"slurm_cpus": "cores"}, 16, 32),                # 32 cores: 4 x 16 = 64 > 32
    ({"slurm_cpus": "cores"}, 8, True),
    ({"core_spec_count": 2}, 16, 60),                 # 2 cores = 4 threads kept for the system
    ({"core_spec_count": 2}, 15, True),
    ({"cpu_spec_list": [0, 1]}, 16, 62),
])
def test_cpus_are_counted_as_slurm_counts_them(changes, cpus_per_task, ok):
    job = _job(cpus_per_task=cpus_per_task)
    if ok is True:
        _plan(job, _profile(**changes))
    else:
        (line,) = _errors(job, _profile(**changes))
        assert "resources.cpus_per_task: asks for 4 tasks x" in line and line.endswith(f"have {ok}")


def test_core_spec_must_leave_cpus_and_not_both_kinds():
    with pytest.raises(ConfigError, match="node_types.gpu.cpu_spec_list: expected core_spec_count or"):
        _profile(core_spec_count=1, cpu_spec_list=[0])
    with pytest.raises(ConfigError, match="node_types.gpu.core_spec_count: expected to leave jobs"):
        _profile(core_spec_count=32)


def test_mig_gres_type_defaults_to_the_profile_name_in_plan_as_in_slurm_conf():
    job = _job(nodes=1, gpus_per_node="1g.10gb:1", tasks_per_node=1, partition="mig", cpus_per_task=1)
    plan = _plan(job)
    assert plan.gpu_request == "--gpus-per-node=1g.10gb:1"


@pytest.mark.parametrize("args", [["plan", "gpt-tiny", "-p", "devcluster"],
                                  ["render", "gpt-tiny", "-p", "devcluster"],
                                  ["submit", "gpt-tiny", "-p", "devcluster", "--dry-run"],
                                  ["submit", "gpt-tiny", "-p", "local", "--dry-run"]])
def test_a_dry_run_writes_nothing(tmp_path, args):
    """No $HPCORCH_HOME folder, no registry, no run directory; the quarantine is read only if it exists."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", *args], capture_output=True, text=True,
                         timeout=120, cwd=cwd, env={**os.environ, "HPCORCH_HOME": str(home),
                                                    "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert not home.exists() and not any(cwd.iterdir())


def test_slurm_conf_mimics_the_sites_qos_and_partition_limits():
    from hpcorch.cluster.slurmconf import qos_commands, slurm_conf

    data = copy.deepcopy(PROFILE)
    data["node_types"]["gpu"]["core_spec_count"] = 2
    data["node_types"]["mig"]["slurm_cpus"] = "cores"
    data["partitions"][1]["partition_qos"] = "normal"
    profile = build(ClusterProfile, data, "qsite.yaml")
    conf = slurm_conf(profile)
    assert "NodeName=g[01-16] CPUs=64 RealMemory=256000 ThreadsPerCore=2 CoreSpecCount=2 Gres=gpu:a100:4 " in conf
    assert "NodeName=m[01-02] CPUs=32 RealMemory=128000 Gres=gpu:1g.10gb:7 " in conf
    assert ("PartitionName=gpu Nodes=g[01-16] Default=YES MaxTime=1-00:00:00 PriorityTier=1 MinNodes=2 MaxNodes=8 "
            "AllowQos=normal,big ") in conf
    assert "PartitionName=debug Nodes=g[01-16] Default=NO MaxTime=00:30:00 PriorityTier=1 MaxNodes=2 QOS=normal " \
        in conf
    assert qos_commands(profile).splitlines()[3:] == [
        "sacctmgr -i add qos normal",
        "sacctmgr -i modify qos where name=normal set MaxWall=12:00:00 MaxTRESPerJob=node=4",
        "sacctmgr -i add qos big",
        "sacctmgr -i modify qos where name=big set MinTRESPerJob=node=4",
        "# big: min_time 01:00:00 is a site rule, not a QOS limit",
        "sacctmgr -i modify account where name=bigproj set qos+=big",
    ]
    # The partition's own QOS binds a job there whatever QOS it names.
    job = _job(partition="debug", nodes=2, time="20", qos="big", account="bigproj")
    assert any("partition 'debug''s QOS 'normal'" in line or "QOS 'big' takes at least 4" in line
               for line in _errors(job, profile))


def test_resource_refusals_come_before_the_batch_arithmetic(tmp_path):
    from hpcorch import service

    (tmp_path / "p.yaml").write_text(dump_yaml(PROFILE))
    (tmp_path / "j.yaml").write_text(dump_yaml({"name": "j", "resources": {
        "nodes": 1, "gpus_per_node": 4, "tasks_per_node": 6, "cpus_per_task": 4, "time": "1:00:00"},
        "trainer": {"global_batch": 8, "micro_batch": 1}}))  # 8 sequences do not split over 6 ranks
    with pytest.raises(PlanErrors) as info:
        service.plan(tmp_path / "j.yaml", tmp_path / "p.yaml")
    keys = [e.key for e in info.value.errors]
    assert keys[:2] == ["resources.nodes", "resources.tasks_per_node"] and keys[-1].startswith("trainer."), keys
