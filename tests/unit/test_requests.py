"""GPU, memory and exclusive requests in the site's style; typed GPUs; QOS, accounts and
implicit partitions: parsing, plan refusals (one line each) and the #SBATCH lines they render."""
import copy
import os

import pytest

from hpcorch.errors import ConfigError, PlanError
from hpcorch.plan.nodefit import check_gpu_type
from hpcorch.plan.plan import make_plan
from hpcorch.plan.siterequests import _written_gpu_type
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import JobSpec, Resources, load_job
from hpcorch.spec.profile import ClusterProfile, GPUs, NodeGroup, NodeType, Partition
from hpcorch.spec.schema import build, to_dict

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")

# A small site: a partition of typed A40 nodes, one of untyped V100 nodes, a CPU partition.
PROFILE = {
    "name": "site",
    "scheduler": "slurm",
    "node_types": {
        "a40-node": {"cpus": 64, "memory_mb": 256000,
                     "gpus": {"count": 4, "model": "A40", "type": "a40", "memory_gb": 48}},
        "v100-node": {"cpus": 32, "memory_mb": 192000, "gpus": {"count": 4, "model": "V100"}},
        "cpu-node": {"cpus": 128, "memory_mb": 512000},
    },
    "partitions": [
        {"name": "gpu", "nodes": "ga[01-08]", "node_type": "a40-node", "default": True},
        {"name": "old", "nodes": "gv[01-04]", "node_type": "v100-node"},
        {"name": "cpu", "nodes": "c[01-16]", "node_type": "cpu-node"},
    ],
}


def _profile(**changes) -> ClusterProfile:
    """PROFILE with top-level keys replaced, and ``partitions.NAME`` keys merged into that partition."""
    data = copy.deepcopy(PROFILE)
    for key, value in changes.items():
        if key.startswith("part_"):
            part = next(p for p in data["partitions"] if p["name"] == key[5:])
            part.update(value)
        else:
            data[key] = value
    return build(ClusterProfile, data, "site.yaml")


def _job(**resources) -> JobSpec:
    res = Resources(**{k: v for k, v in resources.items()})
    batch = res.world_size  # one sequence per rank and step: always divisible
    data = {"name": "j", "resources": resources, "trainer": {"global_batch": batch, "micro_batch": 1}}
    return build(JobSpec, data, "job.yaml")


def _plan(job: JobSpec, profile: ClusterProfile):
    return make_plan(job, profile, run_dir="/scratch/runs/j", source="job.yaml", python="python3")


def _sbatch(job: JobSpec, profile: ClusterProfile) -> list[str]:
    """The script's #SBATCH options, without the ones this file never changes."""
    fixed = ("--job-name", "--nodes", "--ntasks", "--cpus", "--time", "--requeue", "--no-requeue",
             "--signal", "--open-mode", "--output", "--error")
    lines = [line[len("#SBATCH "):] for line in render_sbatch(_plan(job, profile)).splitlines()
             if line.startswith("#SBATCH ")]
    return [line for line in lines if not line.startswith(fixed)]


def _refusal(job: JobSpec, profile: ClusterProfile) -> PlanError:
    with pytest.raises(PlanError) as info:
        _plan(job, profile)
    assert "\n" not in str(info.value) and info.value.source == "job.yaml"
    return info.value


# --- parsing -------------------------------------------------------------------------------

def test_typed_gpus_parse_to_an_int_and_a_type():
    res = Resources(gpus_per_node="a40:4")
    assert (res.gpus_per_node, res.gpu_type, res.tasks_per_node) == (4, "a40", 4)
    assert Resources(gpus_per_node=2, gpu_type="a40").gpu_type == "a40"
    assert Resources(gpus_per_node="a40:2", gpu_type="a40").gpus_per_node == 2
    assert Resources(gpus_per_node=4).gpu_type is None


def test_typed_job_reads_back_as_written(tmp_path):
    """The run directory's job.yaml (to_dict) must rebuild the same job on every rank."""
    job = _job(nodes=2, gpus_per_node="a40:4")
    again = build(JobSpec, to_dict(job), "again.yaml")
    assert to_dict(again) == to_dict(job) and again.resources.gpu_type == "a40"


@pytest.mark.parametrize("resources, key, expected", [
    ({"gpus_per_node": "a40:4", "gpu_type": "v100"}, "resources.gpu_type", "'v100' disagrees with gpus_per_node's type 'a40'"),
    ({"gpus_per_node": "a40"}, "resources.gpus_per_node", "expected a GPU count or TYPE:COUNT such as a40:4, got 'a40'"),
    ({"gpus_per_node": "a40:four"}, "resources.gpus_per_node", "TYPE:COUNT"),
    ({"gpus_per_node": "a 40:4"}, "resources.gpus_per_node", "TYPE:COUNT"),
    ({"gpus_per_node": "a40:4\n#SBATCH --uid=0"}, "resources.gpus_per_node", "expected an integer or a string"),
    ({"gpus_per_node": True}, "resources.gpus_per_node", "expected an integer or a string"),
    ({"gpus_per_node": 4, "gpu_type": "a40;id"}, "resources.gpu_type", "GRES type name"),
    ({"gpu_type": "a40"}, "resources.gpu_type", "expected GPUs with GPU type 'a40' (gpus_per_node is 0)"),
    ({"gpus_per_node": "a40:0"}, "resources.gpus_per_node", "expected GPUs with GPU type"),
    ({"gpus_per_node": 4, "mem": "8G", "mem_per_gpu": "2G"}, "resources.mem_per_gpu", "not both"),
    ({"mem_per_gpu": "2G"}, "resources.mem_per_gpu", "expected GPUs to go with it"),
    ({"gpus_per_node": 4, "mem_per_gpu": "lots"}, "resources.mem_per_gpu", "memory size"),
    ({"mem": "0G"}, "resources.mem", "at least 1M"),
    ({"exclusive": "yes"}, "resources.exclusive", "true or false"),
])
def test_job_request_errors_name_the_key(resources, key, expected):
    with pytest.raises(ConfigError) as info:
        build(JobSpec, {"name": "j", "resources": resources}, "job.yaml")
    assert (info.value.key, info.value.source) == (key, "job.yaml")
    assert expected in info.value.message and "\n" not in str(info.value)


def test_mem_zero_means_the_whole_node():
    assert Resources(mem=0).mem_mb == 0 and Resources(mem="0").mem_mb == 0


@pytest.mark.parametrize("changes, key, expected", [
    ({"node_types": {"n": {"cpus": 1, "memory_mb": 1, "gpus": {"count": 1, "type": "a 40"}}}},
     "node_types.n.gpus.type", "GRES type name"),
    ({"requests": {"gpus": "tres"}}, "requests.gpus", "'gpus-per-node', 'gres', 'gpus', 'gpus-per-task'"),
    ({"requests": {"memory": "lots"}}, "requests.memory", "'whole-node'"),
    ({"requests": {"gpu_type": "sometimes"}}, "requests.gpu_type", "'when-typed'"),
    ({"requests": {"exclusive": "yes"}}, "requests.exclusive", "true or false"),
    ({"part_gpu": {"requests": {"gpus": "tres"}}}, "partitions[0].requests.gpus", "'gres'"),
    ({"part_gpu": {"requests": {"nodes": 1}}}, "partitions[0].requests.nodes", "unknown key"),
    ({"qos": {"debug": {"max_time": "soon"}}}, "qos.debug.max_time", "expected"),
    ({"qos": {"debug": {"max_nodes": 0}}}, "qos.debug.max_nodes", "positive"),
    ({"qos": {"debug": {"accounts": ["a b"]}}}, "qos.debug.accounts[0]", "account name"),
    ({"qos": {"de bug": {}}}, "qos.de bug", "QOS name"),
    ({"qos": {"debug": {}}, "part_old": {"qos": ["normal"]}}, "partitions[1].qos[0]",
     "expected one of the profile's qos (debug), got 'normal'"),
    ({"qos": {"debug": {}}, "defaults": {"qos": "normal"}}, "defaults.qos", "got 'normal'"),
    ({"part_gpu": {"qos": ["debug"], "default_qos": "normal"}}, "partitions[0].default_qos",
     "expected one of this partition's qos (debug), got 'normal'"),
    ({"part_gpu": {"account": "a;b"}}, "partitions[0].account", "account name"),
    ({"part_gpu": {"implicit": "yes"}}, "partitions[0].implicit", "true or false"),
])
def test_profile_request_errors_name_the_key(changes, key, expected):
    with pytest.raises(ConfigError) as info:
        _profile(**changes)
    assert (info.value.key, info.value.source) == (key, "site.yaml")
    assert expected in info.value.message and "\n" not in str(info.value)


def test_partition_requests_override_only_the_keys_given():
    profile = _profile(requests={"gpus": "gres", "memory": "whole-node", "exclusive": True},
                       part_old={"requests": {"memory": "none"}})
    old = profile.requests_for(profile.partition("old"))
    assert (old.gpus, old.gpu_type, old.memory, old.exclusive) == ("gres", "when-typed", "none", True)
    assert profile.requests_for(profile.partition("gpu")) == profile.requests


# --- GPU types in the plan -------------------------------------------------------------------

def _fail(key, message):
    return PlanError("job.yaml", key, message)


def _groups():
    """Two node groups of one partition, as partitions of several node types will give them."""
    a40 = NodeType(cpus=64, memory_mb=256000, gpus=GPUs(count=4, type="a40"))
    v100 = NodeType(cpus=32, memory_mb=192000, gpus=GPUs(count=4, type="v100"))
    return [NodeGroup("v100-node", v100, tuple(f"gv{i:02d}" for i in range(1, 11))),
            NodeGroup("a40-node", a40, tuple(f"ga{i:02d}" for i in range(1, 9)))]


PART = Partition(name="gpu", nodes="gv[01-10],ga[01-08]", node_type="v100-node")


def test_unknown_gpu_type_lists_the_partitions_types():
    with pytest.raises(PlanError) as info:
        check_gpu_type(Resources(gpus_per_node="h100:4"), PART, _groups(), set(), _fail)
    assert (info.value.key, info.value.message) == ("resources.gpus_per_node",
                                                    "partition 'gpu' has GPU types v100, a40; got h100")
    with pytest.raises(PlanError) as info:
        check_gpu_type(Resources(gpus_per_node=4, gpu_type="h100"), PART, _groups(), set(), _fail)
    assert info.value.key == "resources.gpu_type"


def test_typed_request_counts_only_nodes_of_that_type():
    res = Resources(nodes=8, gpus_per_node="a40:4")
    assert [g.node_type for g in check_gpu_type(res, PART, _groups(), set(), _fail)] == ["a40-node"]
    with pytest.raises(PlanError) as info:
        check_gpu_type(Resources(nodes=10, gpus_per_node="a40:4"), PART, _groups(), set(), _fail)
    assert (info.value.key, info.value.message) == (
        "resources.nodes", "asks for 10 nodes with GPU type a40, but partition 'gpu' has 8")
    with pytest.raises(PlanError, match="has 7 after exclusions"):
        check_gpu_type(res, PART, _groups(), {"ga01", "gv01"}, _fail)


def test_gpu_type_policies_for_a_mixed_partition():
    untyped, typed = Resources(gpus_per_node=4), Resources(gpus_per_node="a40:4")
    assert _written_gpu_type(untyped, "when-typed", PART, _groups(), _fail) is None
    assert _written_gpu_type(typed, "when-typed", PART, _groups(), _fail) == "a40"
    assert _written_gpu_type(typed, "always", PART, _groups(), _fail) == "a40"
    with pytest.raises(PlanError) as info:
        _written_gpu_type(untyped, "always", PART, _groups(), _fail)
    assert info.value.key == "resources.gpu_type"
    assert info.value.message == ("profile requests.gpu_type is 'always' (this site needs a GPU type), and "
                                  "partition 'gpu' GPU types are several (v100, a40); set resources.gpu_type")
    with pytest.raises(PlanError, match="'never'.*also has GPUs other than a40; drop the type"):
        _written_gpu_type(typed, "never", PART, _groups(), _fail)


@pytest.mark.parametrize("resources, partition_changes, key, expected", [
    ({"gpus_per_node": "h100:4"}, {}, "resources.gpus_per_node", "partition 'gpu' has GPU types a40; got h100"),
    ({"gpus_per_node": 4, "gpu_type": "a40", "partition": "old"}, {}, "resources.gpu_type",
     "partition 'old' declares no GPU types (node_types.*.gpus.type); got a40"),
    ({"gpus_per_node": "a40:8"}, {}, "resources.gpus_per_node",
     "asks for 8 a40 GPUs per node, but partition 'gpu' a40 nodes have at most 4"),
    ({"nodes": 9, "gpus_per_node": "a40:4"}, {}, "resources.nodes", "asks for 9 nodes, but partition 'gpu' has 8"),
    ({"gpus_per_node": 4, "tasks_per_node": 3}, {"requests": {"gpus": "gpus-per-task"}}, "resources.tasks_per_node",
     "profile requests.gpus is 'gpus-per-task', but 4 GPUs per node do not divide among 3 tasks per node"),
    ({"gpus_per_node": 4, "partition": "old"}, {"requests": {"gpu_type": "always"}}, "resources.gpu_type",
     "partition 'old' GPU types are none declared (node_types.*.gpus.type); set resources.gpu_type"),
    ({"gpus_per_node": 4, "mem_per_gpu": "64G"}, {}, "resources.mem_per_gpu",
     "asks for 4 GPUs x 65536 MB = 262144 MB per node, but a40-node nodes have 256000 MB"),
])
def test_plan_refuses_gpu_requests(resources, partition_changes, key, expected):
    error = _refusal(_job(**resources), _profile(**partition_changes))
    assert error.key == key
    assert expected in error.message


def test_never_policy_accepts_a_type_every_gpu_node_has():
    profile = _profile(requests={"gpu_type": "never", "gpus": "gres"})
    assert _sbatch(_job(gpus_per_node="a40:4"), profile) == ["--partition=gpu", "--gres=gpu:4"]


# --- rendering: every style ----------------------------------------------------------------

@pytest.mark.parametrize("style, gpus, expected", [
    ("gpus-per-node", 4, "--gpus-per-node=4"),
    ("gpus-per-node", "a40:4", "--gpus-per-node=a40:4"),
    ("gres", 4, "--gres=gpu:4"),
    ("gres", "a40:4", "--gres=gpu:a40:4"),
    ("gpus", 4, "--gpus=8"),
    ("gpus", "a40:4", "--gpus=a40:8"),
    ("gpus-per-task", 4, "--gpus-per-task=1"),
    ("gpus-per-task", "a40:4", "--gpus-per-task=a40:1"),
])
def test_gpu_styles_render(style, gpus, expected):
    profile = _profile(requests={"gpus": style})
    assert _sbatch(_job(nodes=2, gpus_per_node=gpus), profile) == ["--partition=gpu", expected]
    assert _plan(_job(nodes=2, gpus_per_node=gpus), profile).gpu_request == expected


def test_gpus_per_task_with_two_gpus_per_task():
    profile = _profile(requests={"gpus": "gpus-per-task"})
    assert "--gpus-per-task=2" in _sbatch(_job(gpus_per_node=4, tasks_per_node=2), profile)


def test_always_writes_the_partitions_only_type():
    profile = _profile(requests={"gpu_type": "always", "gpus": "gres"})
    assert _sbatch(_job(gpus_per_node=4), profile) == ["--partition=gpu", "--gres=gpu:a40:4"]
    assert _plan(_job(gpus_per_node=4), profile).gpu_type == "a40"
    # when-typed (the default) leaves an untyped job untyped.
    assert _sbatch(_job(gpus_per_node=4), _profile(requests={"gpus": "gres"}))[1] == "--gres=gpu:4"


def test_cpu_job_asks_for_no_gpus_in_any_style():
    for style in ("gpus-per-node", "gres", "gpus", "gpus-per-task"):
        assert _sbatch(_job(partition="cpu"), _profile(requests={"gpus": style, "gpu_type": "always"})) == \
            ["--partition=cpu"]


@pytest.mark.parametrize("memory, resources, expected", [
    ("mem", {"mem": "64G"}, ["--mem=65536M"]),
    ("mem", {"mem": 0}, ["--mem=0"]),
    ("mem", {"mem_per_gpu": "32G"}, ["--mem-per-gpu=32768M"]),
    ("mem", {}, []),
    ("mem-per-gpu", {"mem": "64G"}, ["--mem-per-gpu=16384M"]),
    ("mem-per-gpu", {"mem": 0}, ["--mem=0"]),
    ("mem-per-gpu", {"mem_per_gpu": "10G"}, ["--mem-per-gpu=10240M"]),
    ("mem-per-gpu", {}, []),
    ("whole-node", {}, ["--mem=0"]),
    ("whole-node", {"mem": "64G"}, ["--mem=0"]),
    ("whole-node", {"mem_per_gpu": "8G"}, ["--mem=0"]),
    ("none", {"mem": "64G"}, []),
    ("none", {"mem": 0}, []),
    ("none", {"mem_per_gpu": "8G"}, []),
])
def test_memory_styles_render(memory, resources, expected):
    profile = _profile(requests={"memory": memory})
    assert _sbatch(_job(gpus_per_node=4, **resources), profile) == ["--partition=gpu", "--gpus-per-node=4"] + expected


def test_memory_notes_say_what_changed():
    none = _plan(_job(gpus_per_node=4, mem="64G"), _profile(requests={"memory": "none"}))
    assert any("requests.memory is 'none'" in note for note in none.notes)
    rounded = _plan(_job(gpus_per_node=3, mem="1000M"), _profile(requests={"memory": "mem-per-gpu"}))
    assert rounded.memory_request == "--mem-per-gpu=333M"
    assert any("333 MB per GPU (rounded down)" in note for note in rounded.notes)
    # A CPU job has no GPU to divide by: it keeps --mem.
    cpu = _plan(_job(partition="cpu", mem="8G"), _profile(requests={"memory": "mem-per-gpu"}))
    assert cpu.memory_request == "--mem=8192M"


def test_exclusive_from_profile_partition_and_job():
    assert "--exclusive" not in _sbatch(_job(gpus_per_node=4), _profile())
    on = _profile(requests={"exclusive": True})
    assert _sbatch(_job(gpus_per_node=4), on)[-1] == "--exclusive"
    assert "--exclusive" not in _sbatch(_job(gpus_per_node=4, exclusive=False), on)
    assert "--exclusive" in _sbatch(_job(gpus_per_node=4, exclusive=True), _profile())
    shared_old = _profile(requests={"exclusive": True}, part_old={"requests": {"exclusive": False}})
    assert "--exclusive" not in _sbatch(_job(gpus_per_node=4, partition="old"), shared_old)
    assert "--exclusive" in _sbatch(_job(gpus_per_node=4), shared_old)


def test_partition_style_overrides_the_profiles():
    profile = _profile(requests={"gpus": "gres"}, part_old={"requests": {"gpus": "gpus-per-node", "memory": "whole-node"}})
    assert _sbatch(_job(gpus_per_node=4, partition="old", mem="8G"), profile) == \
        ["--partition=old", "--gpus-per-node=4", "--mem=0"]
    assert _sbatch(_job(gpus_per_node=4, mem="8G"), profile) == ["--partition=gpu", "--gres=gpu:4", "--mem=8192M"]


def test_implicit_partition_is_checked_but_not_named():
    profile = _profile(part_gpu={"implicit": True}, defaults={"qos": "regular", "constraint": "gpu"},
                       node_types={**PROFILE["node_types"], "a40-node": {
                           **PROFILE["node_types"]["a40-node"], "features": ["gpu"]}})
    lines = _sbatch(_job(gpus_per_node=4), profile)
    assert lines == ["--gpus-per-node=4", "--qos=regular", "--constraint=gpu"]
    # Named by the job, it is still left out (the site refuses -p), and the plan says so.
    plan = _plan(_job(gpus_per_node=4, partition="gpu"), profile)
    assert "--partition" not in render_sbatch(plan)
    assert any("implicit" in note for note in plan.notes)
    # Still checked: more nodes than it has are refused.
    assert _refusal(_job(nodes=9, gpus_per_node=4), profile).key == "resources.nodes"


def test_request_lines_stay_in_their_place():
    """GPU, memory and exclusive lines sit where --gpus-per-node and --mem always stood."""
    text = render_sbatch(_plan(_job(gpus_per_node=4, mem=0), _profile(requests={"exclusive": True, "gpus": "gres"})))
    lines = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    start = lines.index("#SBATCH --cpus-per-task=1")
    assert lines[start + 1:start + 5] == ["#SBATCH --gres=gpu:4", "#SBATCH --mem=0", "#SBATCH --exclusive",
                                          "#SBATCH --time=01:00:00"]


def test_old_profile_with_the_default_requests_written_out_renders_the_golden_script(repo):
    """Writing the defaults down changes nothing: the request keys are backward compatible."""
    from hpcorch.spec.yamlio import read_yaml

    data = read_yaml(repo / "cluster_profiles/devcluster.yaml")
    data["requests"] = {"gpus": "gpus-per-node", "gpu_type": "when-typed", "memory": "mem", "exclusive": False}
    for part in data["partitions"]:
        part.update({"implicit": False, "qos": [], "requests": {}})
    profile = build(ClusterProfile, data, "devcluster.yaml")
    for job in ("gpt-tiny", "gpt2-124m"):
        plan = make_plan(load_job(repo / "jobs" / f"{job}.yaml"), profile, run_dir=f"/scratch/runs/{job}",
                         python="python3")
        with open(os.path.join(GOLDEN, f"devcluster__{job}.sbatch")) as f:
            assert render_sbatch(plan) == f.read()


# --- QOS and accounts ------------------------------------------------------------------------

QOS = {
    "debug": {"max_time": "30:00", "max_nodes": 2, "max_gpus": 4, "max_gpus_per_node": 2},
    "normal": {"max_time": "2-00:00:00", "max_nodes": 64},
    "big": {"max_nodes": 8, "accounts": ["llm", "vision"]},
    "cpuonly": {"max_gpus": 0},
}


def test_qos_and_account_resolve_job_then_partition_then_defaults():
    profile = _profile(qos=QOS, defaults={"qos": "normal", "account": "lab"},
                       part_old={"default_qos": "debug", "account": "legacy", "qos": ["debug", "normal"]})
    plan = _plan(_job(gpus_per_node=2, time=20, partition="old"), profile)
    assert (plan.qos, plan.account) == ("debug", "legacy")
    plan = _plan(_job(gpus_per_node=4), profile)
    assert (plan.qos, plan.account) == ("normal", "lab")
    plan = _plan(_job(gpus_per_node=2, time=20, partition="old", qos="normal", account="mine"), profile)
    assert (plan.qos, plan.account) == ("normal", "mine")
    assert _sbatch(_job(gpus_per_node=2, time=20, partition="old"), profile) == \
        ["--partition=old", "--gpus-per-node=2", "--account=legacy", "--qos=debug"]


@pytest.mark.parametrize("resources, changes, key, expected", [
    ({"qos": "foo"}, {}, "resources.qos", "expected one of profile 'site''s QOS (debug, normal, big, cpuonly), got 'foo'"),
    ({"nodes": 3, "qos": "debug"}, {}, "resources.nodes", "asks for 3 nodes, but QOS 'debug' allows at most 2"),
    ({"time": "1:00:00", "qos": "debug"}, {}, "resources.time",
     "asks for 01:00:00, but QOS 'debug' allows at most 00:30:00"),
    ({"gpus_per_node": 4, "qos": "debug"}, {}, "resources.gpus_per_node",
     "asks for 4 GPUs per node, but QOS 'debug' allows at most 2 per node"),
    ({"nodes": 2, "gpus_per_node": 4, "qos": "debug"}, {"qos": {"debug": {"max_gpus_per_node": None}}}, "resources.gpus_per_node",
     "asks for 8 GPUs (2 nodes x 4), but QOS 'debug' allows at most 4"),
    ({"gpus_per_node": 1, "qos": "cpuonly"}, {}, "resources.gpus_per_node",
     "asks for 1 GPU (1 node x 1), but QOS 'cpuonly' allows at most 0"),
    ({"qos": "big", "account": "physics"}, {}, "resources.account",
     "QOS 'big' is only for accounts llm, vision; got 'physics'"),
    ({"qos": "big"}, {}, "resources.account", "QOS 'big' is only for accounts llm, vision; the job names none"),
    ({"qos": "big"}, {"defaults": {"account": "physics"}}, "resources.account",
     "got 'physics' (profile 'site''s defaults.account)"),
    ({"partition": "old", "qos": "big"}, {"part_old": {"qos": ["debug"]}}, "resources.qos",
     "QOS 'big' is not allowed in partition 'old', which allows debug"),
    ({"partition": "old"}, {"part_old": {"qos": ["debug"]}, "defaults": {"qos": "normal"}}, "resources.qos",
     "QOS 'normal' (profile 'site''s defaults.qos) is not allowed in partition 'old', which allows debug"),
    ({"nodes": 4}, {"part_gpu": {"default_qos": "debug"}}, "resources.nodes",
     "asks for 4 nodes, but QOS 'debug' (partition 'gpu''s default_qos) allows at most 2"),
    ({"nodes": 64, "qos": "debug", "partition": "cpu"}, {"part_cpu": {"nodes": "c[01-64]"}}, "resources.nodes",
     "asks for 64 nodes, but QOS 'debug' allows at most 2"),
])
def test_plan_refuses_what_the_qos_refuses(resources, changes, key, expected):
    changes = {"qos": QOS, **changes}
    if changes["qos"] is not QOS:
        changes["qos"] = {**QOS, **{k: {**QOS[k], **v} for k, v in changes["qos"].items()}}
    error = _refusal(_job(**{"time": 20, **resources}), _profile(**changes))
    assert error.key == key
    assert expected in error.message


def test_qos_without_a_qos_table_is_passed_on_unchecked():
    """Profiles that list no QOS (all older ones) let any name through, as before."""
    plan = _plan(_job(nodes=8, qos="whatever"), _profile())
    assert plan.qos == "whatever"


def test_qos_allowed_with_the_right_account():
    plan = _plan(_job(nodes=8, qos="big", account="llm"), _profile(qos=QOS))
    assert (plan.qos, plan.account) == ("big", "llm")
