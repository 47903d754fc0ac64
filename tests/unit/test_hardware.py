"""Node groups, the constraint language, hardware fields, fabrics and the Slurm files they write."""
import re

import pytest

from hpcorch.cluster.slurmconf import LocalCluster, gres_conf, slurm_conf
from hpcorch.errors import ConfigError, PlanError
from hpcorch.plan import fabric
from hpcorch.plan.plan import make_plan, summarize
from hpcorch.spec import constraint as cs
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile

# A university cluster whose `gpu` partition mixes V100 and A40 nodes.
MIXED = """
name: mixed
scheduler: slurm
node_types:
  v100: {{cpus: 40, memory_mb: 384000, features: [v100, ib], gpus: {{count: 8, model: V100, type: v100, peak_tflops: 125.0}}}}
  a40-node: {{cpus: 64, memory_mb: 512000, features: [a40, ib], gpus: {{count: 4, model: A40, type: a40, peak_tflops: 149.7}}}}
  cpu: {{cpus: 128, memory_mb: 256000, features: [cpu], threads_per_core: 2, arch: aarch64}}
partitions:
  - name: gpu
    default: true
    node_groups:
      - {{nodes: "gv[01-10]", node_type: v100}}
      - {{nodes: "ga[01-08]", node_type: a40-node}}
  - {{name: cpu, nodes: "c[1-4]", node_type: cpu}}
{extra}
"""


def _write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _mixed(tmp_path, extra="", **replace):
    text = MIXED.format(extra=extra)
    for old, new in replace.items():
        text = text.replace(old, new)
    return load_profile(_write(tmp_path, text))


def _load_error(tmp_path, text) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_profile(_write(tmp_path, text))
    return info.value


# ----- profile: node groups and hardware fields -------------------------------------------------
def test_node_groups_resolve_per_type(tmp_path):
    prof = _mixed(tmp_path)
    groups = prof.groups_of(prof.partition("gpu"))
    assert [(g.node_type, len(g.hosts), g.spec.gpus.type) for g in groups] == [("v100", 10, "v100"), ("a40-node", 8, "a40")]
    assert prof.partition("gpu").hosts[9:11] == ["gv10", "ga01"] and prof.partition("gpu").node_type is None
    assert prof.node_type_of("ga03") == "a40-node" and prof.groups_of(prof.partition("cpu"))[0].hosts == ("c1", "c2", "c3", "c4")
    assert prof.node_types["cpu"].arch == "aarch64" and prof.node_types["cpu"].threads_per_core == 2


@pytest.mark.parametrize("partition, key, fragment", [
    ('{name: p, nodes: "n[1-2]", node_type: n, node_groups: [{nodes: "n3", node_type: n}]}',
     "partitions[0].node_groups", "not both"),
    ("{name: p}", "partitions[0].nodes", "expected nodes + node_type, or node_groups"),
    ('{name: p, nodes: "n[1-2]"}', "partitions[0].node_type", "nodes and node_type go together"),
    ('{name: p, node_groups: [{nodes: "n[1-2]", node_type: n}, {nodes: "m1", node_type: zz}]}',
     "partitions[0].node_groups[1].node_type", "expected one of ['m', 'n'], got 'zz'"),
    ('{name: p, node_groups: [{nodes: "n[1-2]", node_type: n}, {nodes: "n2", node_type: m}]}',
     "partitions[0].node_groups[1].nodes", "nodes n2 are of node type 'n' in partition 'p', not 'm'"),
    ('{name: p, node_groups: [{nodes: "n[1-", node_type: n}]}', "partitions[0].node_groups[0].nodes", "hostlist"),
])
def test_partition_forms_are_checked(tmp_path, partition, key, fragment):
    text = ("name: t\nscheduler: slurm\nnode_types: {n: {cpus: 4, memory_mb: 1000}, m: {cpus: 4, memory_mb: 1000}}\n"
            f"partitions:\n  - {partition}\n")
    err = _load_error(tmp_path, text)
    assert (err.key, fragment in err.message) == (key, True), err


@pytest.mark.parametrize("node_type, key, fragment", [
    ("{cpus: 6, memory_mb: 1000, threads_per_core: 4}", "cpus", "multiple of threads_per_core (4)"),
    ("{cpus: 4, memory_mb: 1000, arch: arm64}", "arch", "'x86_64', 'aarch64', 'ppc64le'"),
    ("{cpus: 4, memory_mb: 1000, gpus: {count: 7, mig: 1g-10gb}}", "gpus.mig", "MIG profile name such as 1g.10gb"),
    ("{cpus: 4, memory_mb: 1000, gpus: {count: 7, mig: 1g.10gb, vendor: amd}}", "gpus.mig", "NVIDIA feature"),
    ("{cpus: 4, memory_mb: 1000, gpus: {mig: 1g.10gb}}", "gpus.count", "number of MIG slices"),
    ("{cpus: 4, memory_mb: 1000, gpus: {count: 4, vendor: intel}}", "gpus.vendor", "'nvidia', 'amd'"),
    ("{cpus: 4, memory_mb: 1000, gpus: {count: 4, type: 'a 40'}}", "gpus.type", "GRES type name"),
])
def test_hardware_fields_are_checked(tmp_path, node_type, key, fragment):
    text = f"name: t\nscheduler: slurm\nnode_types: {{n: {node_type}}}\npartitions: [{{name: p, nodes: n1, node_type: n}}]\n"
    err = _load_error(tmp_path, text)
    assert err.key == f"node_types.n.{key}" and fragment in err.message, err


@pytest.mark.parametrize("network, key, fragment", [
    ("{fabric: slingshot, infiniband: {hcas: [mlx5_0]}}", "network.infiniband", "fabric 'slingshot' has none"),
    ("{fabric: infiniband, infiniband: {hcas: [mlx5_0], gid_index: 3}}", "network.infiniband.gid_index", "roce only"),
    ("{fabric: roce, infiniband: {hcas: [mlx5_0], gid_index: 300}}", "network.infiniband.gid_index", "0-255"),
    ("{fabric: myrinet}", "network.fabric", "'slingshot'"),
])
def test_network_fabric_is_checked(tmp_path, network, key, fragment):
    text = ("name: t\nscheduler: slurm\nnode_types: {n: {cpus: 4, memory_mb: 1000}}\n"
            f"partitions: [{{name: p, nodes: n1, node_type: n}}]\nnetwork: {network}\n")
    err = _load_error(tmp_path, text)
    assert err.key == key and fragment in err.message, err


def test_fabric_defaults_from_the_infiniband_section():
    assert load_profile("h100-ndr").network.fabric == "infiniband"
    assert load_profile("devcluster").network.fabric == "infiniband"  # emulated ports
    assert load_profile("local").network.fabric == "ethernet"


# ----- the constraint language -----------------------------------------------------------------
@pytest.mark.parametrize("text, have, expected", [
    ("a40", {"a40"}, True), ("a40&ib", {"a40"}, False), ("a40,ib", {"a40", "ib"}, True),
    ("v100|a40", {"a40"}, True), ("(v100|a40)&ib", {"a40", "ib"}, True), ("(v100|a40)&ib", {"a40"}, False),
    # Slurm reads & and | left to right: a|b&c is (a|b)&c, not a|(b&c).
    ("a|b&c", {"a"}, False), ("a&b|c", {"c"}, True),
    ("gpu*4", set(), True),  # a count says how many nodes have it, not which the job may use
])
def test_constraint_matches(text, have, expected):
    assert cs.matches(cs.parse(text), have) is expected


@pytest.mark.parametrize("text, reason", [
    ("!a40", "'!' (negation) is not Slurm constraint syntax"), ("a&", "ends after an operator"),
    ("a&&b", "expected a feature name"), ("[a|b", "unclosed '['"), ("a)", "unexpected ')'"),
    ("[a&[b]]", "brackets cannot nest"), ("a*0", "at least 1"), ("a b", "unexpected character ' '"), ("", "empty"),
])
def test_bad_constraints_are_refused_at_load(repo, text, reason):
    with pytest.raises(ConfigError) as info:
        load_job(repo / "jobs/gpt-tiny.yaml", [f"resources.constraint='{text}'"])
    assert info.value.key == "resources.constraint" and reason in info.value.message


def test_constraint_counts_and_alternatives():
    expr = cs.parse("[(rack1|rack2)*1&(rack3)*2]")
    assert [(cs.show(t, top=False), n) for t, n in cs.counted(expr)] == [("(rack1|rack2)", 1), ("rack3", 2)]
    assert [cs.show(a) for a in cs.alternatives(cs.parse("[a40|v100]&ib"))] == ["a40&ib", "v100&ib"]
    assert cs.alternatives(cs.parse("a40|v100")) == [cs.parse("a40|v100")]


# ----- plan across node groups ------------------------------------------------------------------
def _plan(repo, prof, *overrides):
    # One task per node unless a case says otherwise; 720720 divides by every world size here.
    job = load_job(repo / "jobs/gpt-tiny.yaml", ["resources.tasks_per_node=1", "trainer.global_batch=720720",
                                                 "trainer.micro_batch=1", *overrides])
    return make_plan(job, prof, source="job.yaml")


def _refusal(repo, prof, *overrides) -> PlanError:
    with pytest.raises(PlanError) as info:
        _plan(repo, prof, *overrides)
    assert "\n" not in info.value.message
    return info.value


@pytest.mark.parametrize("overrides, key, message", [
    (["resources.nodes=16", "resources.constraint=a40"], "resources.constraint",
     "asks for 16 nodes with feature a40, but partition 'gpu' has 8 (ga[01-08])"),
    (["resources.gpus_per_node=16"], "resources.gpus_per_node",
     "asks for 16 GPUs per node, but partition 'gpu' nodes have at most 8 (v100)"),
    (["resources.gpus_per_node=8", "resources.cpus_per_task=64"], "resources.cpus_per_task",
     "asks for 8 GPUs, 64 CPUs and 2000 MB per node, but no node type of partition 'gpu' has all of that; "
     "the closest, v100, has 40 of 64 CPUs per node"),
    (["resources.nodes=12", "resources.gpus_per_node=8"], "resources.nodes",
     "asks for 12 nodes with 8 GPUs per node, but partition 'gpu' has 10 (gv[01-10])"),
    (["resources.nodes=12", "resources.constraint='[v100|a40]'"], "resources.constraint",
     "asks for 12 nodes all matching one alternative of '[v100|a40]', but partition 'gpu' has 10 (gv[01-10])"),
    (["resources.nodes=9", "resources.constraint='[v100*2&a40*9]'"], "resources.constraint",
     "asks for 9 nodes with a40 ([v100*2&a40*9]), but partition 'gpu' has 8 (ga[01-08])"),
    (["resources.nodes=8", "resources.constraint=a40&ib", "resources.exclude=ga01"], "resources.constraint",
     "asks for 8 nodes matching 'a40&ib', but partition 'gpu' has 7 after exclusions (ga[02-08])"),
    (["resources.constraint=a40&nvme"], "resources.constraint",
     "'a40&nvme' names feature nvme that no node of partition 'gpu' (v100, a40-node) has; its features: v100, ib, a40"),
])
def test_plan_refusals_across_node_groups(repo, tmp_path, overrides, key, message):
    err = _refusal(repo, _mixed(tmp_path), *overrides)
    assert (err.key, err.message) == (key, message)


@pytest.mark.parametrize("overrides, groups", [
    (["resources.nodes=12", "resources.constraint=v100|a40"], ["v100", "a40-node"]),
    (["resources.nodes=8", "resources.constraint=(v100|a40)&ib"], ["v100", "a40-node"]),
    (["resources.nodes=10", "resources.gpus_per_node=8"], ["v100"]),
    (["resources.nodes=4", "resources.constraint='[v100*2&a40*2]'"], ["v100", "a40-node"]),
    (["resources.nodes=8", "resources.constraint=a40", "resources.mem=500G"], ["a40-node"]),
    (["resources.nodes=8", "resources.constraint='[v100|a40]'"], ["v100", "a40-node"]),
    (["resources.nodes=9", "resources.constraint='[v100|a40]'"], ["v100"]),
])
def test_plans_that_fit_record_their_node_groups(repo, tmp_path, overrides, groups):
    plan = _plan(repo, _mixed(tmp_path), *overrides)
    assert [g.node_type for g in plan.node_groups] == groups


def test_summary_names_every_gpu_model_the_job_may_get(repo, tmp_path):
    prof = _mixed(tmp_path)
    assert summarize(_plan(repo, prof, "resources.gpus_per_node=4"))["gpus"] == "4 x V100 or A40"
    assert "peak_pflops" not in summarize(_plan(repo, prof, "resources.gpus_per_node=4"))
    one = summarize(_plan(repo, prof, "resources.gpus_per_node=4", "resources.constraint=a40"))
    assert one["gpus"] == "4 x A40" and one["peak_pflops"] == 0.6


MIG = """
name: mig
scheduler: slurm
node_types:
  a100-mig: {cpus: 64, memory_mb: 512000, features: [mig], gpus: {count: 28, model: A100, mig: 1g.10gb}}
partitions: [{name: mig, nodes: "m[1-4]", node_type: a100-mig}]
"""


@pytest.mark.parametrize("overrides, key, fragment", [
    (["resources.gpus_per_node=1", "resources.nodes=2"], "resources.nodes",
     "asks for 2 ranks on MIG slices (1g.10gb on a100-mig): NCCL cannot run collectives between MIG instances"),
    (["resources.gpus_per_node=2", "resources.tasks_per_node=2"], "resources.tasks_per_node",
     "asks for 2 ranks on MIG slices"),
    (["resources.gpus_per_node=2"], "resources.gpus_per_node",
     "a process sees only one MIG instance"),
])
def test_mig_slices_take_one_rank(repo, tmp_path, overrides, key, fragment):
    err = _refusal(repo, load_profile(_write(tmp_path, MIG)), *overrides)
    assert err.key == key and fragment in err.message, err.message


def test_one_rank_on_one_mig_slice_plans(repo, tmp_path):
    plan = _plan(repo, load_profile(_write(tmp_path, MIG)), "resources.gpus_per_node=1")
    assert plan.world_size == 1


# ----- fabrics ---------------------------------------------------------------------------------
def _fabric_profile(tmp_path, network, vendor="nvidia"):
    text = ("name: f\nscheduler: slurm\n"
            f"node_types: {{g: {{cpus: 8, memory_mb: 8000, gpus: {{count: 4, vendor: {vendor}}}}}}}\n"
            "partitions: [{name: p, nodes: 'g[1-2]', node_type: g}]\n"
            f"network: {network}\n")
    return load_profile(_write(tmp_path, text))


@pytest.mark.parametrize("network, vendor, expected", [
    ("{infiniband: {hcas: [mlx5_0, mlx5_1], ports: 2}}", "nvidia",
     {"NCCL_IB_HCA": "=mlx5_0:1,mlx5_0:2,mlx5_1:1,mlx5_1:2"}),
    ("{fabric: roce, infiniband: {hcas: [mlx5_0], gid_index: 3}}", "nvidia",
     {"NCCL_IB_HCA": "=mlx5_0:1", "NCCL_IB_GID_INDEX": "3"}),
    ("{fabric: omnipath, infiniband: {hcas: [hfi1_0]}}", "nvidia", {"NCCL_IB_HCA": "=hfi1_0:1"}),
    ("{fabric: efa}", "nvidia", {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1"}),
    ("{fabric: ethernet}", "nvidia", {}),
    ("{fabric: infiniband}", "nvidia", {}),  # NCCL finds the HCAs itself when none are named
])
def test_fabric_environment(tmp_path, network, vendor, expected):
    prof = _fabric_profile(tmp_path, network, vendor)
    assert fabric.environment(prof, prof.groups_of(prof.partition(None))) == expected


def test_slingshot_environment_and_amd_additions(tmp_path):
    nvidia = _fabric_profile(tmp_path, "{fabric: slingshot}")
    env = fabric.environment(nvidia, nvidia.groups_of(nvidia.partition(None)))
    assert env["FI_PROVIDER"] == "cxi" and env["NCCL_SOCKET_IFNAME"] == "hsn" and env["NCCL_NET_GDR_LEVEL"] == "PHB"
    assert env["FI_CXI_DISABLE_HOST_REGISTER"] == "1" and env["FI_MR_CACHE_MONITOR"] == "userfaultfd"
    assert env["NCCL_CROSS_NIC"] == "1" and "HSA_FORCE_FINE_GRAIN_PCIE" not in env
    amd = _fabric_profile(tmp_path, "{fabric: slingshot}", vendor="amd")
    env = fabric.environment(amd, amd.groups_of(amd.partition(None)))
    assert env["NCCL_SOCKET_IFNAME"] == "hsn0,hsn1,hsn2,hsn3" and env["HSA_FORCE_FINE_GRAIN_PCIE"] == "1"
    assert env["FI_PROVIDER"] == "cxi"


def test_plan_puts_profile_and_job_variables_over_derived_ones(repo, tmp_path):
    text = ("name: f\nscheduler: slurm\nnode_types: {g: {cpus: 8, memory_mb: 8000, gpus: {count: 4}}}\n"
            "partitions: [{name: p, nodes: 'g[1-2]', node_type: g}]\n"
            "network: {fabric: slingshot}\n"
            "environment: {variables: {NCCL_SOCKET_IFNAME: hsn0, OMP_NUM_THREADS: 2}}\n")
    prof = load_profile(_write(tmp_path, text))
    job = load_job(repo / "jobs/gpt-tiny.yaml", ["environment.FI_PROVIDER=cxi-custom"])
    env = make_plan(job, prof, source="job.yaml").environment
    assert env["NCCL_SOCKET_IFNAME"] == "hsn0" and env["FI_PROVIDER"] == "cxi-custom"
    assert env["NCCL_NET_GDR_LEVEL"] == "PHB" and env["OMP_NUM_THREADS"] == "2"
    # h100-ndr names its HCAs and interfaces under `network`: the derived values come first,
    # exact names with ports, then the profile's own variables.
    h100 = make_plan(load_job(repo / "jobs/gpt-tiny.yaml"), load_profile("h100-ndr"), source="job.yaml").environment
    assert list(h100)[:2] == ["NCCL_IB_HCA", "NCCL_SOCKET_IFNAME"] and h100["NCCL_SOCKET_IFNAME"] == "^lo,docker"
    assert h100["NCCL_IB_HCA"] == "=" + ",".join(f"mlx5_{i}:1" for i in range(8))


# ----- slurm-conf ------------------------------------------------------------------------------
def test_slurm_conf_for_mixed_v100_a40(tmp_path):
    prof = _mixed(tmp_path)
    conf = slurm_conf(prof)
    assert "NodeName=gv[01-10] CPUs=40 RealMemory=384000 Gres=gpu:v100:8 Feature=v100,ib State=UNKNOWN" in conf
    assert "NodeName=ga[01-08] CPUs=64 RealMemory=512000 Gres=gpu:a40:4 Feature=a40,ib State=UNKNOWN" in conf
    assert "NodeName=c[1-4] CPUs=128 RealMemory=256000 ThreadsPerCore=2 Feature=cpu State=UNKNOWN" in conf
    assert "PartitionName=gpu Nodes=ga[01-08],gv[01-10] Default=YES" in conf
    assert gres_conf(prof) == ("# gres.conf generated by hpcorch\nAutoDetect=nvml\n"
                               "NodeName=gv[01-10] Name=gpu Type=v100 File=/dev/nvidia[0-7]\n"
                               "NodeName=ga[01-08] Name=gpu Type=a40 File=/dev/nvidia[0-3]\n")


AMD = """
name: amd
scheduler: slurm
node_types:
  mi250x: {cpus: 128, memory_mb: 512000, threads_per_core: 2, gpus: {count: 8, model: MI250X-GCD, type: mi250, vendor: amd}}
  a100: {cpus: 64, memory_mb: 512000, gpus: {count: 4, model: A100}}
partitions:
  - {name: standard-g, nodes: "nid[005000-005003]", node_type: mi250x, default: true}
  - {name: nv, nodes: "gpu[1-2]", node_type: a100}
"""


def test_gres_conf_for_amd_and_mixed_vendors(tmp_path):
    prof = load_profile(_write(tmp_path, AMD))
    assert "NodeName=nid[005000-005003] CPUs=128 RealMemory=512000 ThreadsPerCore=2 Gres=gpu:mi250:8 " in slurm_conf(prof)
    assert gres_conf(prof) == ("# gres.conf generated by hpcorch\n"
                               "NodeName=nid[005000-005003] AutoDetect=rsmi\n"
                               "NodeName=nid[005000-005003] Name=gpu Type=mi250 File=/dev/dri/renderD[128-135]\n"
                               "NodeName=gpu[1-2] AutoDetect=nvml\n"
                               "NodeName=gpu[1-2] Name=gpu File=/dev/nvidia[0-3]\n")
    only_amd = AMD.replace("  a100: {cpus: 64, memory_mb: 512000, gpus: {count: 4, model: A100}}\n", "")
    only_amd = load_profile(_write(tmp_path, only_amd.replace('  - {name: nv, nodes: "gpu[1-2]", node_type: a100}\n', "")))
    assert gres_conf(only_amd).splitlines()[1:] == ["AutoDetect=rsmi", "NodeName=nid[005000-005003] Name=gpu "
                                                    "Type=mi250 File=/dev/dri/renderD[128-135]"]


def test_mig_is_typed_by_its_profile_and_left_to_nvml(tmp_path):
    prof = load_profile(_write(tmp_path, MIG))
    assert "NodeName=m[1-4] CPUs=64 RealMemory=512000 Gres=gpu:1g.10gb:28 Feature=mig" in slurm_conf(prof)
    text = gres_conf(prof)
    assert text.splitlines()[1] == "AutoDetect=nvml" and "Name=gpu" not in text
    assert "# a100-mig: 28 MIG slices 1g.10gb per node, found by NVML" in text


def test_dev_cluster_files_keep_fake_devices_with_types(tmp_path):
    prof = load_profile("devcluster")
    text = gres_conf(prof, LocalCluster(tmp_path))
    assert text.splitlines()[1] == "AutoDetect=off"
    # One line per node: each emulated node's own device files (one can be hidden alone).
    assert f"NodeName=node1 Name=gpu Type=emua File={tmp_path}/nodes/node1/dev/nvidia[0-3]" in text
    assert f"NodeName=node4 Name=gpu Type=emub File={tmp_path}/nodes/node4/dev/nvidia[0-3]" in text
    assert len([line for line in text.splitlines() if line.startswith("NodeName=")]) == 4
    assert re.search(r"NodeName=node\[3-4\] .*Gres=gpu:emub:4 Feature=emu,grpb ", slurm_conf(prof, LocalCluster(tmp_path)))
