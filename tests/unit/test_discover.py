"""`hpcorch profile discover` and `profile diff`: parsers over recorded outputs of four Slurm
versions (tests/data/slurm), the draft profile, drift lines, the CLI with fake Slurm commands,
and (marked slurm) the real dev cluster."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from hpcorch.cluster import discover as d
from hpcorch.cluster.slurm import SlurmError
from hpcorch.spec.yamlio import parse_yaml

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
VERSIONS = ["20.11", "22.05", "23.02", "24.05"]
FILES = {("scontrol", "show", "config"): "config", ("scontrol", "-o", "show", "node"): "node",
         ("scontrol", "-o", "show", "partition"): "partition", ("scontrol", "show", "topology"): "topology"}


def recorded(version: str, calls: list | None = None):
    """A runner that answers from tests/data/slurm/VERSION (NAME.err: the command fails)."""
    folder = DATA / version

    def run(*args):
        if calls is not None:
            calls.append(args)
        key = FILES.get(args) or ("qos" if "qos" in args else "assoc" if "assoc" in args else None)
        assert key, f"unexpected command {args}"
        err = folder / f"{key}.err"
        if err.exists():
            raise SlurmError(f"{' '.join(args)} failed (exit 1): {err.read_text().strip()}")
        return (folder / f"{key}.txt").read_text()

    return run


def live(version: str) -> d.LiveCluster:
    return d.collect(recorded(version), user="alice")


# --- parsers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_config_version_and_plugins(version):
    config = d.parse_config((DATA / version / "config.txt").read_text())
    assert config["SLURM_VERSION"].startswith(version)
    assert config["TopologyPlugin"].startswith("topology/")
    assert "Configuration" not in config and "Slurmctld(primary)" not in config


def test_one_line_and_multi_line_layouts_agree():
    one = d.parse_records((DATA / "20.11/node.txt").read_text(), "NodeName")
    multi = d.parse_records((DATA / "20.11/node-multiline.txt").read_text(), "NodeName")
    assert one == multi and len(one) == 6


def test_free_text_values_keep_their_words():
    nodes = {r["NodeName"]: r for r in d.parse_records((DATA / "20.11/node.txt").read_text(), "NodeName")}
    assert nodes["cpu001"]["OS"] == "Linux 3.10.0-1160.el7.x86_64 #1 SMP Mon Oct 19 16:18:59 UTC 2020"
    # A lower-case word with '=' inside a reason is part of the reason, not a new key.
    assert nodes["cpu003"]["Reason"] == "memory errors on DIMM B2, ticket=4711 [root@2023-01-11T08:30:00]"
    assert nodes["cpu001"]["RealMemory"] == "191000" and d.value(nodes["cpu001"], "Gres") is None
    assert d.value(nodes["cpu001"], "AllocTRES") is None and d.value(nodes["cpu001"], "Owner") is None


@pytest.mark.parametrize("text, gres", [
    ("gpu:a40:4(S:0-1)", [d.Gres("gpu", "a40", 4)]),
    ("gpu:4", [d.Gres("gpu", None, 4)]),
    ("gpu:1g.10gb:7,gpu:2g.20gb:2", [d.Gres("gpu", "1g.10gb", 7), d.Gres("gpu", "2g.20gb", 2)]),
    ("gpu:a100:4(S:0,1),nic:1", [d.Gres("gpu", "a100", 4), d.Gres("nic", None, 1)]),
    ("gpu:a100:no_consume:4", [d.Gres("gpu", "a100", 4)]),
    ("mps:200,gpu", [d.Gres("mps", None, 200), d.Gres("gpu", None, 1)]),
    ("shard:2K", [d.Gres("shard", None, 2048)]),
    ("(null)", []), (None, []), ("", []),
])
def test_parse_gres(text, gres):
    assert d.parse_gres(text) == gres


def test_nodes_over_versions():
    nodes = {n.name: n for n in live("24.05").nodes}
    gh = nodes["gh001"].shape
    assert (gh.arch, gh.cpus, gh.threads_per_core, gh.gpu_count, gh.gpu_type) == ("aarch64", 72, 1, 1, "gh200")
    mig = nodes["mig01"]
    assert (mig.shape.gpu_type, mig.shape.gpu_count, mig.other_gpus) == ("1g.10gb", 14, [d.Gres("gpu", "2g.20gb", 6)])
    assert nodes["h01"].shape.threads_per_core == 2 and nodes["h01"].shape.cpus == 224
    old = {n.name: n for n in live("20.11").nodes}
    assert (old["gv01"].shape.gpu_type, old["gv01"].shape.gpu_count) == (None, 4)
    assert old["cpu001"].shape.features == ("cpu", "skylake") and old["cpu001"].partitions == ["cpu"]
    never = {n.name: n for n in live("23.02").nodes}["gv04"]
    assert never.shape.arch is None and never.state == "DOWN*"


def test_partitions_over_versions():
    parts = {p.name: p for p in live("23.02").partitions}
    assert parts["cpu"].default and not parts["gpu"].default
    assert parts["gpu"].nodes == "ga[01-03],gv[01-04]" and parts["gpu"].max_time == "2-00:00:00"
    assert parts["gpu"].allow_qos == ["normal", "gpu-long"] and parts["cpu"].allow_qos is None
    new = {p.name: p for p in live("24.05").partitions}
    assert new["mig"].qos == "part-mig" and new["normal"].qos is None and new["debug"].priority_tier == 2
    assert {p.name: p.nodes for p in live("20.11").partitions}["empty"] is None


def test_topology_tree_and_blocks():
    tree = d.parse_topology((DATA / "22.05/topology.txt").read_text())
    assert [(s.name, s.level, s.switches) for s in tree.switches] == [
        ("leaf1", 0, []), ("leaf2", 0, []), ("spine", 1, ["leaf1", "leaf2"])]
    assert tree.switches[2].nodes == ["node1", "node2", "node3", "node4"] and not tree.blocks
    blocks = d.parse_topology((DATA / "24.05/topology.txt").read_text())
    assert [(b.name, b.index, b.nodes) for b in blocks.blocks] == [
        ("b1", 0, ["gh001", "gh002"]), ("b2", 1, ["gh003", "gh004"]), ("b3", 2, ["h01", "h02", "mig01", "mig02"])]
    assert d.parse_topology("scontrol: error: No topology information available\n") == d.Topology()


def test_qos_and_assoc():
    qos = {q.name: q for q in live("23.02").qos}
    assert qos["normal"] == d.Qos("normal", 0, "2-00:00:00", 4, 16, 4)
    assert qos["gpu-long"] == d.Qos("gpu-long", 10, "7-00:00:00", 2, 8, 4)
    assoc = live("23.02").assoc
    assert [(a.account, a.partition, a.qos) for a in assoc] == [
        ("chem-lab", "gpu", ["gpu-long", "normal"]), ("chem-lab", "cpu", ["normal"]), ("bio-group", None, ["normal"])]


# --- collecting ------------------------------------------------------------------------------

def test_accounting_off_asks_no_sacctmgr_and_tree_plugin_none_no_topology():
    calls = []
    got = d.collect(recorded("20.11", calls), user="alice")
    assert [c[0] for c in calls] == ["scontrol"] * 3 and ("scontrol", "show", "topology") not in calls
    assert got.qos is None and "accounting is off" in got.qos_missing


def test_refused_accounting_is_a_note_not_an_error():
    got = live("24.05")
    assert got.assoc is None and "Access/permission denied" in got.assoc_missing and got.qos
    text = d.render_draft(d.build_profile(got))
    assert "# Accounts left out: sacctmgr show assoc:" in text and "Access/permission denied" in text


@pytest.mark.slow
def test_runner_errors_are_one_line(tmp_path):
    run = d.subprocess_runner(timeout_s=1)
    with pytest.raises(SlurmError, match=r"^no-such-slurm-command: not found"):
        run("no-such-slurm-command", "show", "config")
    with pytest.raises(SlurmError, match=r"^sh -c echo boom >&2; exit 3 failed \(exit 3\): boom$"):
        run("sh", "-c", "echo boom >&2; exit 3")
    with pytest.raises(SlurmError, match=r"no answer in 1 s"):
        run("sleep", "10")
    assert d.subprocess_runner(env={"HPCORCH_X": "y"})("sh", "-c", "echo $HPCORCH_X") == "y\n"


# --- the draft -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_draft_text_reads_back_as_its_data(version):
    draft = d.build_profile(live(version))
    assert parse_yaml(d.render_draft(draft), "draft") == draft.data


def test_devcluster_draft():
    data = d.build_profile(live("22.05")).data
    assert data["node_types"] == {
        "emua": {"cpus": 4, "memory_mb": 4000, "arch": "x86_64", "threads_per_core": 1,
                 "gpus": {"count": 4, "type": "emua"}, "features": ["emu", "grpa"]},
        "emub": {"cpus": 4, "memory_mb": 4000, "arch": "x86_64", "threads_per_core": 1,
                 "gpus": {"count": 4, "type": "emub"}, "features": ["emu", "grpb"]}}
    groups = [{"nodes": "node[1-2]", "node_type": "emua"}, {"nodes": "node[3-4]", "node_type": "emub"}]
    assert data["partitions"] == [
        {"name": "batch", "node_groups": groups, "max_time": "1-00:00:00", "default": True, "priority_tier": 1},
        {"name": "urgent", "node_groups": groups, "max_time": "1-00:00:00", "default": False, "priority_tier": 10}]
    assert data["network"] == {"switches": {
        "leaves": [{"name": "leaf1", "nodes": "node[1-2]"}, {"name": "leaf2", "nodes": "node[3-4]"}],
        "spines": [{"name": "spine", "switches": ["leaf1", "leaf2"]}]}}
    assert data["qos"] == {"normal": {}} and data["defaults"] == {"account": "root"}


def test_mixed_partition_and_names():
    draft = d.build_profile(live("23.02"), name="campus")
    data = draft.data
    assert list(data["node_types"]) == ["v100", "a40", "cpu"]
    # gv04 never registered (no Arch): it joins its shape's type instead of becoming a fourth.
    gpu = next(p for p in data["partitions"] if p["name"] == "gpu")
    assert gpu["node_groups"] == [{"nodes": "ga[01-03]", "node_type": "a40"},
                                  {"nodes": "gv[01-04]", "node_type": "v100"}]
    assert gpu["qos"] == ["normal", "gpu-long"] and "node_type" not in gpu
    assert data["qos"]["gpu-long"] == {"max_time": "7-00:00:00", "max_nodes": 2, "max_gpus": 8,
                                       "max_gpus_per_node": 4, "accounts": ["chem-lab"]}
    assert "accounts" not in data["qos"]["normal"]  # every account of the user may use it
    assert "defaults" not in data  # two accounts: the user picks
    text = d.render_draft(draft)
    assert "# FILL IN: account: one of bio-group, chem-lab" in text


def test_same_base_name_gets_a_suffix():
    shape = dict(cpus=8, memory_mb=1000, gpu_count=4, gpu_type="a100", features=())
    nodes = [d.Node("a1", d.Shape(**shape)), d.Node("b1", d.Shape(**{**shape, "memory_mb": 2000})),
             d.Node("c1", d.Shape(**{**shape, "gpu_count": 0, "gpu_type": None, "features": ("bigmem",)})),
             d.Node("e1", d.Shape(**{**shape, "gpu_count": 0, "gpu_type": None}))]
    types, type_of = d.node_types(nodes)
    assert type_of == {"a1": "a100", "b1": "a100-2", "c1": "bigmem", "e1": "cpu"}


def test_block_topology_mig_and_aarch64_draft():
    draft = d.build_profile(live("24.05"))
    data, text = draft.data, d.render_draft(draft)
    assert data["node_types"]["gh200"]["arch"] == "aarch64"
    assert data["node_types"]["1g.10gb"]["gpus"] == {"count": 14, "type": "1g.10gb", "mig": "1g.10gb"}
    assert "also offer gpu:2g.20gb:6" in text
    assert "network" not in data and "#   BlockName=b1 Nodes=gh[001-002]" in text
    assert "profiles have no block topology yet" in text
    assert next(p for p in data["partitions"] if p["name"] == "mig")["qos"] == ["mig"]
    assert "# Partition QOS part-mig sets this partition's limits." in text


def test_fill_in_marks_what_slurm_cannot_know():
    text = d.render_draft(d.build_profile(live("22.05")))
    for what in ("# model:", "# peak_tflops:", "# interconnect:", "# fabric:", "# infiniband:",
                 "#   modules:", "# launch: {python:", "# FILL IN: run_root:", "# login:"):
        assert what in text, what
    assert text.count("FILL IN") >= 7


def test_empty_partition_and_no_partitions():
    text = d.render_draft(d.build_profile(live("20.11")))
    assert "# Left out: partition 'empty' (no nodes)." in text
    bare = live("20.11")
    bare.partitions = [p for p in bare.partitions if p.name == "empty"]
    with pytest.raises(SlurmError, match="no partition with nodes"):
        d.build_profile(bare)


def _has_merged_schema() -> bool:
    import dataclasses

    from hpcorch.spec.profile import Partition

    return "node_groups" in {f.name for f in dataclasses.fields(Partition)}


@pytest.mark.skipif(not _has_merged_schema(), reason="the profile loader has no partition node_groups "
                    "yet (the [HW] part of issue 14 adds them); the drafts use the design's keys")
@pytest.mark.parametrize("version", VERSIONS)
def test_drafts_load_with_the_real_loader(version, tmp_path):
    from hpcorch.spec.profile import load_profile

    path = tmp_path / "draft.yaml"
    path.write_text(d.render_draft(d.build_profile(live(version))))
    prof = load_profile(path)
    assert sorted(prof.all_hosts()) == sorted(n.name for n in live(version).nodes
                                              if n.partitions)


# --- drift -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_a_fresh_draft_has_no_drift(version):
    assert d.diff(_p(d.build_profile(live(version)).data), live(version)) == []


def _p(data: dict):
    """Plain profile data (a draft, or one edited here) as the loader builds it."""
    from hpcorch.spec.profile import ClusterProfile
    from hpcorch.spec.schema import build

    return build(ClusterProfile, data, "profile.yaml")


def _dev() -> dict:
    return copy.deepcopy(d.build_profile(live("22.05")).data)


def test_drift_lines():
    cluster = live("22.05")
    gone = _dev()
    for part in gone["partitions"]:
        part["node_groups"][1]["nodes"] = "node3"
    gone["network"]["switches"]["leaves"][1]["nodes"] = "node3"
    assert d.diff(_p(gone), cluster) == [
        "nodes node4: on the cluster, not in the profile",
        "partition batch: nodes node[1-3] in the profile, node[1-4] on the cluster",
        "partition urgent: nodes node[1-3] in the profile, node[1-4] on the cluster",
        "leaf switch leaf2: nodes node3 in the profile, node[3-4] on the cluster"]
    gres = _dev()
    gres["node_types"]["emub"]["gpus"]["count"] = 8
    gres["node_types"]["emua"]["gpus"]["type"] = "a100"
    gres["node_types"]["emua"]["features"] = ["emu"]
    gres["node_types"]["emua"]["memory_mb"] = 8000
    assert d.diff(_p(gres), cluster) == [
        "nodes node[1-2] (node type emua): memory_mb 8000 in the profile, 4000 on the cluster",
        "nodes node[1-2] (node type emua): gpus.type a100 in the profile, emua on the cluster",
        "nodes node[1-2] (node type emua): features [emu] in the profile, [emu, grpa] on the cluster",
        "nodes node[3-4] (node type emub): gpus.count 8 in the profile, 4 on the cluster"]
    parts = _dev()
    parts["partitions"][0].update(max_time="2-00:00:00", default=False, priority_tier=3)
    parts["partitions"][1]["name"] = "urgent2"
    parts["network"]["switches"]["spines"][0]["switches"] = ["leaf1", "leaf2", "leaf9"]
    parts["network"]["switches"]["leaves"].append({"name": "leaf9", "nodes": "node9"})
    parts["partitions"][1]["node_groups"].append({"nodes": "node9", "node_type": "emub"})
    assert d.diff(_p(parts), cluster) == [
        "nodes node9: in the profile, not on the cluster",
        "partition urgent2: in the profile, not on the cluster",
        "partition urgent: on the cluster, not in the profile (nodes node[1-4])",
        "partition batch: max_time 2-00:00:00 in the profile, 1-00:00:00 on the cluster",
        "partition batch: default false in the profile, true on the cluster",
        "partition batch: priority_tier 3 in the profile, 1 on the cluster",
        "leaf switch leaf9: in the profile, not on the cluster",
        "spine switch spine: switches [leaf1, leaf2, leaf9] in the profile, [leaf1, leaf2] on the cluster"]


def test_what_slurm_cannot_report_is_no_drift():
    prof = _dev()
    for nt in prof["node_types"].values():
        nt["gpus"].update(model="H100", memory_gb=80, peak_tflops=989.0, interconnect="nvlink", vendor="nvidia")
    prof["node_types"] = {f"renamed-{k}": v for k, v in prof["node_types"].items()}
    for part in prof["partitions"]:
        for group in part["node_groups"]:
            group["node_type"] = f"renamed-{group['node_type']}"
    prof["network"]["infiniband"] = {"hcas": ["mlx5_0"]}
    prof["environment"] = {"modules": ["cuda/12.4"]}
    assert d.diff(_p(prof), live("22.05")) == []


def test_old_shorthand_profile_and_defaults():
    """A profile in the old form (nodes + node_type, no arch, untyped GPUs) against 20.11."""
    prof = {"name": "uni", "scheduler": "slurm",
            "node_types": {"cpu": {"cpus": 40, "memory_mb": 191000, "features": ["skylake", "cpu"]},
                           "v100": {"cpus": 32, "memory_mb": 385000, "gpus": {"count": 4, "model": "V100"},
                                    "features": ["v100"]}},
            "partitions": [{"name": "cpu", "nodes": "cpu[001-004]", "node_type": "cpu", "max_time": "7-00:00:00",
                            "default": True},
                           {"name": "gpu", "nodes": "gv[01-02]", "node_type": "v100", "max_time": "2-00:00:00"},
                           {"name": "debug", "nodes": "gv[01-02]", "node_type": "v100", "max_time": 30,
                            "priority_tier": 2}]}
    assert d.diff(_p(prof), live("20.11")) == []
    cluster = live("24.05")
    arm = {"name": "x", "scheduler": "slurm", "node_types": {"gh": {"cpus": 72, "memory_mb": 460000,
                                                                    "gpus": {"count": 1, "type": "gh200"},
                                                                    "features": ["gh200", "nvlink"]}},
           "partitions": [{"name": "debug", "nodes": "gh[001-002]", "node_type": "gh", "max_time": "30",
                           "priority_tier": 2}]}
    lines = d.diff(_p(arm), cluster)
    assert "nodes gh[001-002] (node type gh): arch x86_64 in the profile, aarch64 on the cluster" in lines


def test_mig_slices_without_a_type_compare_by_their_profile_name():
    """A MIG node type's GRES type defaults to its MIG profile (as slurm-conf writes it), so a
    profile that gives only ``mig`` is no drift against Slurm's ``gpu:1g.10gb:14``."""
    prof = copy.deepcopy(d.build_profile(live("24.05")).data)
    del prof["node_types"]["1g.10gb"]["gpus"]["type"]
    assert d.diff(_p(prof), live("24.05")) == []


def test_block_topology_against_a_tree_is_drift():
    prof = _dev()
    cluster = live("22.05")
    cluster.topology = d.parse_topology("BlockName=b1 BlockIndex=0 Nodes=node[1-4]\n")
    lines = d.diff(_p(prof), cluster)
    assert lines[-1] == "switch tree: the profile has one, the cluster uses a block topology (1 blocks)"
    assert "leaf switch leaf1: in the profile, not on the cluster" in lines


# --- the commands, with fake scontrol/sacctmgr -----------------------------------------------

def test_cli_discover_writes_refuses_overwrite_and_diff_exits(tmp_path, fake_slurm):
    env = fake_slurm.replay(DATA / "20.11").env
    out = tmp_path / "uni.yaml"
    res = run_cli("profile", "discover", "--name", "uni", "-o", out, env=env)
    assert res.returncode == 0, res.stderr
    assert "name: uni" in out.read_text() and "wrote" in res.stderr
    again = run_cli("profile", "discover", "-o", out, env=env)
    assert again.returncode == 2 and again.stderr.strip() == f"error: {out}: exists; pass --force to overwrite it"
    assert run_cli("profile", "discover", "-o", out, "--force", env=env).returncode == 0
    printed = run_cli("profile", "discover", env=env)
    assert printed.returncode == 0 and printed.stdout.startswith("# Draft written")

    # The old-form profile loads on any schema; the cluster agrees (0), then drifts (1).
    prof = tmp_path / "old.yaml"
    prof.write_text("""name: uni
scheduler: slurm
node_types:
  cpu: {cpus: 40, memory_mb: 191000, features: [cpu, skylake]}
  v100: {cpus: 32, memory_mb: 385000, gpus: {count: 4, model: V100}, features: [v100]}
partitions:
  - {name: cpu, nodes: "cpu[001-004]", node_type: cpu, max_time: "7-00:00:00", default: true}
  - {name: gpu, nodes: "gv[01-02]", node_type: v100, max_time: "2-00:00:00"}
  - {name: debug, nodes: "gv[01-02]", node_type: v100, max_time: "00:30:00", priority_tier: 2}
""")
    same = run_cli("profile", "diff", prof, env=env)
    assert (same.returncode, same.stdout, same.stderr) == (0, "", "")
    prof.write_text(prof.read_text().replace("count: 4", "count: 2"))
    drift = run_cli("profile", "diff", prof, env=env)
    assert drift.returncode == 1
    assert drift.stdout == "nodes gv[01-02] (node type v100): gpus.count 2 in the profile, 4 on the cluster\n"


def test_cli_errors_exit_2_on_one_line(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    res = run_cli("profile", "discover", env={"PATH": str(empty)})
    assert res.returncode == 2
    assert res.stderr == "error: scontrol: not found; run this on a login node with Slurm's commands on PATH\n"
    res = run_cli("profile", "diff", "devcluster", env={"PATH": str(empty)})
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    local = run_cli("profile", "diff", "local", env={"PATH": str(empty)})
    assert local.returncode == 2 and "expected a Slurm profile" in local.stderr
    missing = run_cli("profile", "diff", tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "no such profile file" in missing.stderr


def test_cold_path_imports_neither_torch_nor_submitit(fake_slurm):
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            "for args in (['profile', 'discover'], ['profile', 'diff', 'devcluster']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'submitit', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(REPO), env={**os.environ, **fake_slurm.replay(DATA / "22.05").env})
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


# --- the real dev cluster (run by the lead; `slurm` aims Slurm's commands at it) ---------------
