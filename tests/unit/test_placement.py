"""Topology-aware placement (--switches / --segment), the NCCL variables a profile derives or may
not set, and where ranks landed (placement events, `hpcorch status`)."""
import itertools
import json

import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcorch.errors import ConfigError, PlanError
from hpcorch.observe.status import placement_summary
from hpcorch.plan import fabric
from hpcorch.plan.placement import fewest_domains, segment_size
from hpcorch.plan.plan import make_plan, summarize
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.state.rundir import RunDir


# A ddp job whose batch fits any node count of 4-GPU nodes: nodes x 4 ranks x 1 sequence.
def _job(repo, nodes, *extra):
    return load_job(repo / "jobs/gpt2-124m.yaml", [f"resources.nodes={nodes}", f"trainer.global_batch={nodes * 4}",
                                                   "trainer.micro_batch=1", *extra])


def _plan(repo, profile, nodes, *extra, **kw):
    return make_plan(_job(repo, nodes, *extra), profile if not isinstance(profile, str) else load_profile(profile),
                     run_dir="/scratch/runs/x", source="job.yaml", python="python3", **kw)


# ----- the arithmetic -----------------------------------------------------------------------------
def _brute_force(capacities, nodes):
    for k in range(len(capacities) + 1):
        if any(sum(c) >= nodes for c in itertools.combinations(capacities, k)):
            return k
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), max_size=7), st.integers(1, 60))
def test_fewest_leaves_equals_brute_force(capacities, nodes):
    assert fewest_domains(capacities, nodes) == _brute_force(capacities, nodes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=6), st.integers(1, 20), st.integers(1, 60))
def test_segment_size_divides_fits_and_is_largest(capacities, base, nodes):
    size = segment_size(capacities, base, nodes)
    def fits(s):
        return nodes % s == 0 and s <= base and sum(c // s for c in capacities) >= nodes // s

    assert size == 1 or fits(size)
    assert not any(fits(s) for s in range(size + 1, nodes + 1))


# ----- the job's placement: section --------------------------------------------------------------
@pytest.mark.parametrize("override, switches, wait", [
    ([], "auto", "00:10:00"),
    (["placement.switches=off"], "off", "00:10:00"),  # YAML's `off` is false: it means off here
    (["placement.switches=3", "placement.max_wait=1-00:00:00"], 3, "1-00:00:00"),
    (["placement.max_wait=90"], "auto", "01:30:00"),
])
def test_placement_spec(repo, override, switches, wait):
    job = _job(repo, 2, *override)
    assert (job.placement.switches, job.placement.max_wait_text) == (switches, wait)


@pytest.mark.parametrize("override, message", [
    ("placement.switches=0", "positive leaf-switch count"),
    ("placement.switches=true", "got true"),
    ("placement.switches=many", "expected one of 'auto', 'off'"),
    ("placement.max_wait=UNLIMITED", "finite wait"),
    ("placement.max_wait=soon", "Slurm time"),
    ("placement.leaves=1", "unknown key"),
])
def test_bad_placement_is_one_line_naming_the_key(repo, override, message):
    with pytest.raises(ConfigError) as info:
        _job(repo, 2, override)
    assert info.value.key.startswith("placement.") and message in info.value.message


# ----- switch trees ------------------------------------------------------------------------------
def test_h100_job_asks_for_the_fewest_leaf_switches(repo):
    plan = _plan(repo, "h100-ndr", 8)
    assert plan.placement_directive == "--switches=1@00:10:00" and not plan.warnings
    assert plan.placement.describe() == "8 nodes fit in 1 leaf switch (leaf size 32)"
    text = render_sbatch(plan)
    assert "#SBATCH --exclude" not in text
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    # In the header block after the resources (and --exclude), before the signals block.
    assert header[header.index("#SBATCH --requeue") - 1] == "#SBATCH --switches=1@00:10:00"
    wide = _plan(repo, "h100-ndr", 40)
    assert wide.placement_directive == "--switches=2@00:10:00"
    assert wide.warnings == ["40 nodes span at least 2 leaf switches (the largest leaf holds 32 usable nodes): "
                             "collectives cross the spine"]
    assert summarize(wide)["placement"] == {
        "topology": "tree", "nodes": 40, "leaf_switches": 2, "leaf_size": 32, "names": ["su1", "su2"],
        "directive": "--switches=2@00:10:00", "summary": "40 nodes fit in 2 leaf switches (leaf size 32)"}


def test_exclusions_shrink_the_leaves(repo):
    # 31 of su1's 32 nodes and 20 of su2's excluded: 40 nodes need su3 and su4 ... plus one more.
    plan = _plan(repo, "h100-ndr", 40, "resources.exclude=dgx[001-031,033-052]")
    assert plan.placement.domains == 2 and plan.placement.names == ("su3", "su4")
    plan = _plan(repo, "h100-ndr", 70, "resources.exclude=dgx[001-031,033-052]")
    assert plan.placement.domains == 3 and plan.placement_directive == "--switches=3@00:10:00"


def test_switch_count_off_and_explicit(repo):
    off = _plan(repo, "h100-ndr", 8, "placement.switches=off")
    assert off.placement_directive is None and "placement.switches is off" in " ".join(off.notes)
    assert "--switches" not in render_sbatch(off)
    assert _plan(repo, "h100-ndr", 40, "placement.switches=4").placement_directive == "--switches=4@00:10:00"
    with pytest.raises(PlanError) as info:
        _plan(repo, "h100-ndr", 40, "placement.switches=1")
    assert info.value.key == "placement.switches"
    assert info.value.message == ("asks for at most 1 leaf switch, but 40 nodes need at least 2 (the largest "
                                  "leaf holds 32 usable nodes)")


def test_one_node_and_local_jobs_ask_nothing(repo):
    assert _plan(repo, "h100-ndr", 1).placement is None
    local = make_plan(load_job(repo / "jobs/gpt-tiny.yaml"), load_profile("local"))
    assert local.placement is None


def test_devcluster_two_nodes_on_one_leaf(repo):
    plan = make_plan(load_job(repo / "jobs/gpt-tiny.yaml", ["resources.nodes=2", "trainer.global_batch=64"]), load_profile("devcluster"),
                     run_dir="/scratch/runs/x")
    assert plan.placement_directive == "--switches=1@00:10:00"
    assert "#SBATCH --switches=1@00:10:00\n" in render_sbatch(plan)


def test_profile_without_a_tree(repo):
    assert _plan(repo, "a100-slingshot", 2, "resources.gpus_per_node=4", "resources.cpus_per_task=32").placement is None
    plan = _plan(repo, "a100-slingshot", 2, "resources.cpus_per_task=32", "placement.switches=2")
    assert plan.placement_directive == "--switches=2@00:10:00"
    assert any("describes no switch tree" in w for w in plan.warnings)


def test_switches_is_not_an_extra_directive(repo):
    with pytest.raises(ConfigError, match="placement.switches and placement.max_wait"):
        _job(repo, 2, "resources.extra_directives=[--switches=1]")


def test_cli_refusal_is_one_line_exit_2(repo):
    out = run_cli("plan", "gpt2-124m", "-p", "h100-ndr", "--set", "resources.nodes=40", "--set",
                  "trainer.global_batch=160", "--set", "trainer.micro_batch=1", "--set", "placement.switches=1")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: gpt2-124m: placement.switches: asks for at most 1 leaf switch")


# ----- block topologies --------------------------------------------------------------------------
BLOCKS = """
name: nvl
scheduler: slurm
{version}
node_types:
  gb: {{cpus: 144, memory_mb: 800000, gpus: {{count: 4}}}}
partitions:
  - {{name: p, nodes: "gb[001-072]", node_type: gb, default: true}}
network:
  blocks:
    block_sizes: {sizes}
    blocks:
      - {{name: rack1, nodes: "gb[001-018]"}}
      - {{name: rack2, nodes: "gb[019-036]"}}
      - {{name: rack3, nodes: "gb[037-054]"}}
      - {{name: rack4, nodes: "gb[055-072]"}}
"""


def _blocks(tmp_path, version='slurm_version: "24.05"', sizes="[18, 36]", extra=""):
    path = tmp_path / "nvl.yaml"
    path.write_text(BLOCKS.format(version=version, sizes=sizes) + extra)
    return load_profile(path)


@pytest.mark.parametrize("nodes, directive, blocks", [(16, "--segment=16", 1), (18, "--segment=18", 1),
                                                      (36, "--segment=18", 2), (20, "--segment=10", 2)])
def test_block_profiles_ask_for_segments(repo, tmp_path, nodes, directive, blocks):
    plan = _plan(repo, _blocks(tmp_path), nodes)
    assert plan.placement_directive == directive and plan.placement.domains == blocks
    assert (len(plan.warnings) == 1) == (blocks > 1)
    assert f"#SBATCH {directive}\n" in render_sbatch(plan)


def test_block_profiles_on_older_slurm_and_refusals(repo, tmp_path):
    old = _plan(repo, _blocks(tmp_path, 'slurm_version: "23.11"'), 16)
    assert old.placement_directive is None and any("no --segment" in n for n in old.notes)
    assert _plan(repo, _blocks(tmp_path, ""), 16).placement_directive == "--segment=16"  # None: a current Slurm
    with pytest.raises(PlanError) as info:
        _plan(repo, _blocks(tmp_path), 16, "placement.switches=1")
    assert info.value.key == "placement.switches" and "describes blocks" in info.value.message
    prime = _plan(repo, _blocks(tmp_path), 37)
    assert prime.placement_directive is None and any("no segment size above 1" in n for n in prime.notes)


@pytest.mark.parametrize("kw, key, message", [
    ({"version": 'slurm_version: "22.05"'}, "network.blocks", "needs Slurm 23.11"),
    ({"version": "slurm_version: 24"}, "slurm_version", "expected a string"),
    ({"version": 'slurm_version: "24"'}, "slurm_version", "23.11 or 24.05.3"),
    ({"sizes": "[18, 27]"}, "network.blocks.block_sizes[1]", "power of two times 18"),
    ({"sizes": "[0]"}, "network.blocks.block_sizes[0]", "positive"),
    ({"extra": "  switches: {leaves: [{name: l1, nodes: 'gb[001-072]'}]}\n"}, "network.blocks", "not both"),
])
def test_block_profile_errors(tmp_path, kw, key, message):
    with pytest.raises(ConfigError) as info:
        _blocks(tmp_path, **kw)
    assert info.value.key == key and message in info.value.message


@pytest.mark.parametrize("old, new, key, message", [
    ("rack2, nodes", "rack1, nodes", "network.blocks.blocks[1].name", "duplicate block 'rack1'"),
    ('"gb[019-036]"', '"gb[018-036]"', "network.blocks.blocks[1].nodes", "already in block 'rack1'"),
    ('"gb[055-072]"', '"gb[055-080]"', "network.blocks.blocks[3].nodes", "unknown gb073"),
    ('"gb[055-072]"', '"gb[055-"', "network.blocks.blocks[3].nodes", "hostlist"),
])
def test_blocks_are_validated_like_the_tree(tmp_path, old, new, key, message):
    path = tmp_path / "nvl.yaml"
    path.write_text(BLOCKS.format(version="", sizes="[18]").replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert info.value.key == key and message in info.value.message


# ----- NCCL variables ----------------------------------------------------------------------------
def test_fabric_variables_of_each_shipped_profile(repo):
    derived = {}
    for name in ("local", "devcluster", "h100-ndr", "a100-hdr", "a100-slingshot", "mi250x-slingshot"):
        prof = load_profile(name)
        derived[name] = fabric.environment(prof, prof.groups_of(prof.partition(None)))
    assert derived["local"] == {}
    assert derived["devcluster"] == {"NCCL_IB_HCA": "=mlx5_0:1"}  # its emulated port
    assert derived["h100-ndr"] == {"NCCL_IB_HCA": "=" + ",".join(f"mlx5_{i}:1" for i in range(8)),
                                   "NCCL_SOCKET_IFNAME": "^lo,docker"}
    assert derived["a100-hdr"] == {"NCCL_IB_HCA": "=mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1"}
    assert derived["a100-slingshot"]["NCCL_SOCKET_IFNAME"] == "hsn"
    assert derived["mi250x-slingshot"]["NCCL_SOCKET_IFNAME"] == "hsn0,hsn1,hsn2,hsn3"


NET = """name: f
scheduler: slurm
node_types: {{g: {{cpus: 8, memory_mb: 8000, gpus: {{count: 4}}}}}}
partitions: [{{name: p, nodes: 'g[1-2]', node_type: g}}]
network: {network}
environment: {{variables: {variables}}}
"""


def _net(tmp_path, network="{}", variables="{}"):
    path = tmp_path / "f.yaml"
    path.write_text(NET.format(network=network, variables=variables))
    return path


def test_socket_ifname_and_topo_file_are_derived_and_explicit_values_win(repo, tmp_path):
    prof = load_profile(_net(tmp_path, "{fabric: slingshot, socket_ifname: '=hsn0', nccl_topo_file: /etc/topo.xml}"))
    env = fabric.environment(prof, prof.groups_of(prof.partition(None)))
    assert env["NCCL_SOCKET_IFNAME"] == "=hsn0" and env["NCCL_TOPO_FILE"] == "/etc/topo.xml"
    prof = load_profile(_net(tmp_path, "{socket_ifname: ib, nccl_topo_file: '${HOME}/topo.xml'}",
                             "{NCCL_SOCKET_IFNAME: eth}"))
    plan = _plan(repo, prof, 2, "environment.NCCL_TOPO_FILE=/opt/t.xml")
    assert plan.environment["NCCL_SOCKET_IFNAME"] == "eth" and plan.environment["NCCL_TOPO_FILE"] == "/opt/t.xml"
    text = render_sbatch(_plan(repo, load_profile(_net(tmp_path, "{nccl_topo_file: '${HOME}/t.xml'}")), 2))
    assert 'export NCCL_TOPO_FILE="${HOME}/t.xml"\n' in text


@pytest.mark.parametrize("network, key, message", [
    ("{socket_ifname: 'eth0 eth1'}", "network.socket_ifname", "NCCL_SOCKET_IFNAME's syntax"),
    ("{socket_ifname: '^'}", "network.socket_ifname", "NCCL_SOCKET_IFNAME's syntax"),
    ("{nccl_topo_file: topo.xml}", "network.nccl_topo_file", "absolute path"),
    ("{nccl_topo_file: '/x/$(reboot)'}", "network.nccl_topo_file", ""),
])
def test_bad_network_values(tmp_path, network, key, message):
    with pytest.raises(ConfigError) as info:
        load_profile(_net(tmp_path, network))
    assert info.value.key == key and message in info.value.message


@pytest.mark.parametrize("name", ["NCCL_ALGO", "NCCL_PROTO", "NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_P2P_DISABLE",
                                  "NCCL_SHM_DISABLE", "NCCL_IB_DISABLE", "NCCL_IB_QPS_PER_CONNECTION"])
def test_profiles_refuse_nccl_debugging_variables(tmp_path, name):
    path = _net(tmp_path, variables=f"{{{name}: 1}}")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert info.value.key == f"environment.variables.{name}" and "--nccl-debug" in info.value.message
    out = run_cli("plan", "gpt-tiny", "-p", path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"error: {path}: environment.variables.{name}: is one of NCCL's debugging")


def test_jobs_may_set_them_with_a_warning_and_nccl_debug_is_per_submission(repo):
    plan = _plan(repo, "h100-ndr", 2, "environment.NCCL_ALGO=Ring")
    assert plan.environment["NCCL_ALGO"] == "Ring"
    assert any(w.startswith("environment sets NCCL debugging variable NCCL_ALGO") for w in plan.warnings)
    plan = _plan(repo, "h100-ndr", 2, "environment.NCCL_DEBUG=WARN", nccl_debug="info")
    assert plan.environment["NCCL_DEBUG"] == "INFO" and "export NCCL_DEBUG=INFO\n" in render_sbatch(plan)
    assert "NCCL_DEBUG" not in _plan(repo, "h100-ndr", 2).environment
    with pytest.raises(PlanError, match="expected one of VERSION, WARN, INFO, TRACE"):
        _plan(repo, "h100-ndr", 2, nccl_debug="LOUD")


def test_nccl_debug_flag_on_the_cli(repo):
    out = run_cli("submit", "gpt-tiny", "-p", "devcluster", "--dry-run", "--nccl-debug")
    assert out.returncode == 0, out.stderr
    assert "export NCCL_DEBUG=INFO\n" in out.stdout
    out = run_cli("submit", "gpt-tiny", "-p", "devcluster", "--dry-run", "--nccl-debug", "TRACE")
    assert "export NCCL_DEBUG=TRACE\n" in out.stdout
    out = run_cli("plan", "gpt-tiny", "-p", "devcluster", "--json", "--nccl-debug=WARN")
    assert "NCCL_DEBUG=WARN for this submission" in json.dumps(json.loads(out.stdout))
    out = run_cli("plan", "gpt-tiny", "-p", "devcluster", "--nccl-debug=loud")
    assert out.returncode == 2 and out.stderr.startswith("error: --nccl-debug: expected one of"), out.stderr


# ----- where ranks landed --------------------------------------------------------------------------
def _events(tmp_path, *events):
    run = RunDir(tmp_path)
    run.events.write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def _place(rank, node, addr):
    return {"event": "placement", "rank": rank, "local_rank": rank % 2, "node": node, "topology_addr": addr}


def test_status_summarizes_the_latest_start(tmp_path):
    assert placement_summary(RunDir(tmp_path)) is None
    run = _events(tmp_path, {"event": "process_start"}, _place(0, "node1", "spine.leaf1.node1"),
                  _place(1, "node3", "spine.leaf2.node3"), {"event": "first_step"},
                  {"event": "process_start"}, _place(0, "node1", "spine.leaf1.node1"),
                  _place(1, "node2", "spine.leaf1.node2"), '{"event": "placem')
    assert placement_summary(run) == "2 nodes on 1 leaf switch (leaf1)"
    run = _events(tmp_path, {"event": "process_start"}, _place(0, "n1", "s.leaf1.n1"), _place(1, "n3", "s.leaf2.n3"))
    assert placement_summary(run) == "2 nodes on 2 leaf switches (leaf1, leaf2)"
    run = _events(tmp_path, {"event": "process_start"}, _place(0, "laptop", None), _place(1, "laptop", None))
    assert placement_summary(run) == "1 node (laptop; no switch recorded)"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ranks_record_where_they_landed(tmp_path):
    from trainhelp import train

    out = train(tmp_path, 2, "trainer.steps=2", env={"SLURM_TOPOLOGY_ADDR": "spine.leaf1.nodeA",
                                                     "SLURMD_NODENAME": "nodeA"})
    assert out.returncode == 0, out.stdout + out.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    placed = [e for e in events if e["event"] == "placement"]
    assert [(e["rank"], e["local_rank"], e["node"], e["topology_addr"]) for e in placed] == [
        (0, 0, "nodeA", "spine.leaf1.nodeA"), (1, 1, "nodeA", "spine.leaf1.nodeA")]
    assert [e["event"] for e in events].index("placement") == 1  # right after process_start
    assert placement_summary(RunDir(tmp_path)) == "1 node on 1 leaf switch (leaf1)"
