import subprocess

import pytest

from hpcorch.errors import ConfigError
from hpcorch.spec import units
from hpcorch.spec.profile import list_profiles, load_profile


def test_shipped_profiles_load():
    assert set(list_profiles()) >= {"local", "devcluster", "h100-ndr", "a100-hdr"}
    for name in list_profiles():
        load_profile(name)


def test_devcluster_matches_issue():
    prof = load_profile("devcluster")
    assert prof.all_hosts() == ["node1", "node2", "node3", "node4"]
    assert prof.partition(None).name == "batch"
    assert prof.partition("urgent").priority_tier > prof.partition("batch").priority_tier
    for name, group, hosts in (("emu-a", "grpa", ["node1", "node2"]), ("emu-b", "grpb", ["node3", "node4"])):
        emu = prof.node_types[name]
        assert (emu.cpus, emu.memory_mb, emu.gpus.count, emu.features) == (4, 4000, 4, ["emu", group])
        assert [g.hosts for g in prof.groups_of(prof.partition("batch")) if g.node_type == name] == [tuple(hosts)]
    assert [leaf.hosts for leaf in prof.network.switches.leaves] == [["node1", "node2"], ["node3", "node4"]]


def test_production_profiles_shape():
    h100 = load_profile("h100-ndr")
    assert h100.node_types["dgx-h100"].gpus.count == 8
    assert h100.network.infiniband.rails_per_node == 8
    assert h100.network.infiniband.link_rate_gbps == 400
    a100 = load_profile("a100-hdr")
    assert a100.node_types["a100-40g"].gpus.memory_gb == 40
    assert a100.network.infiniband.link_rate_gbps == 200


@pytest.mark.parametrize("expr, hosts", [
    ("node[1-4]", ["node1", "node2", "node3", "node4"]),
    ("gpu[001-003,130]", ["gpu001", "gpu002", "gpu003", "gpu130"]),
    ("a[08-10]", ["a08", "a09", "a10"]),
    ("n1,m[1-2]", ["n1", "m1", "m2"]),
])
def test_hostlist_expand(expr, hosts):
    assert units.expand_hostlist(expr) == hosts
    assert sorted(units.expand_hostlist(units.compress_hostlist(hosts))) == sorted(hosts)


def _scontrol_hostnames(scontrol: str, expr: str, tmp_path) -> list[str]:
    # `scontrol show hostnames` expands locally: it needs a config file but no running controller.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=hostlisttest\nSlurmctldHost=localhost\n")
    out = subprocess.run([scontrol, "show", "hostnames", expr], capture_output=True, text=True,
                         timeout=30, env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.slow
@pytest.mark.parametrize("expr", ["node[1-4]", "gpu[001-003,130]", "a[08-10]", "jwb[0001-0016]",
                                  "n1,m[1-2]", "n[9-11]", "n[098-101]", "r1-n[1-2],r2-n1"])
def test_hostlist_agrees_with_scontrol(expr, tmp_path, scontrol):
    assert _scontrol_hostnames(scontrol, expr, tmp_path) == units.expand_hostlist(expr)


@pytest.mark.parametrize("hosts", [
    ["n1", "n01", "n2", "n02"], [f"gpu{i:03d}" for i in range(1, 129)], ["n9", "n10", "n099", "n100"],
    ["login", "r1-n1", "r1-n2", "r2-n1", "x.y7"], [f"gpu{i:05d}" for i in range(1, 16385, 3)],
])
def test_compressed_hostlist_is_what_scontrol_expands(hosts, tmp_path, scontrol):
    """Slurm reads our compressed form back as exactly the hosts we meant (sorted, deduplicated)."""
    expr = units.compress_hostlist(hosts)
    assert sorted(_scontrol_hostnames(scontrol, expr, tmp_path)) == sorted(set(hosts))


# Slurm 22.05 prints "Invalid hostlist" (or garbage) for these, though scontrol still exits 0.
@pytest.mark.parametrize("expr", ["a[08-10]b", "x[1-", "y[a-b]", "", "n[1-2] m3", "bad;name", "n1\n", "n1,",
                                  "-n1", "n[3-1]", "n[1,,2]", "r[1-2]-n1"])
def test_hostlist_rejects_what_slurm_rejects(expr):
    with pytest.raises(ValueError, match="hostlist"):
        units.expand_hostlist(expr)


@pytest.mark.parametrize("text, seconds", [
    ("90", 5400), (90, 5400), ("5:30", 330), ("2:00:00", 7200), ("1-00:00:00", 86400),
    ("1-2", 93600), ("1-2:30", 95400), ("UNLIMITED", None),
])
def test_parse_time(text, seconds):
    assert units.parse_time(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "1:2:3:4", "-5", "0", "1-", True])
def test_parse_time_rejects(bad):
    with pytest.raises(ValueError):
        units.parse_time(bad)


@pytest.mark.parametrize("text, mb", [("4000", 4000), (4000, 4000), ("4000M", 4000), ("64G", 65536),
                                       ("1T", 1048576), ("2048K", 2)])
def test_parse_memory(text, mb):
    assert units.parse_memory_mb(text) == mb


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


BASE = """
name: t
scheduler: slurm
node_types:
  n: {cpus: 4, memory_mb: 1000}
partitions:
  - {name: p, nodes: "n[1-2]", node_type: n}
"""


@pytest.mark.parametrize("patch, key, expected", [
    ("scheduler: slurm", "scheduler", "one of 'slurm', 'local'"),
    ("- {name: p, nodes: \"n[1-2]\", node_type: n}", "partitions[0].node_type", "expected one of ['n']"),
    ("{cpus: 4, memory_mb: 1000}", "node_types.n.cpus", "positive"),
    ("{cpus: 4, memory_mb: 1000}", "node_types.n.colour", "unknown key"),
    ("nodes: \"n[1-2]\"", "partitions[0].nodes", "hostlist"),
])
def test_profile_errors_name_file_and_key(tmp_path, patch, key, expected):
    replacement = {
        "scheduler: slurm": "scheduler: pbs",
        "- {name: p, nodes: \"n[1-2]\", node_type: n}": "- {name: p, nodes: \"n[1-2]\", node_type: m}",
        "{cpus: 4, memory_mb: 1000}": "{cpus: -4, memory_mb: 1000}" if key.endswith("cpus")
        else "{cpus: 4, memory_mb: 1000, colour: red}",
        "nodes: \"n[1-2]\"": "nodes: \"n[1-\"",
    }[patch]
    path = _write(tmp_path, BASE.replace(patch, replacement))
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert info.value.source == str(path)
    assert info.value.key == key
    assert expected in info.value.message


def test_profile_bad_yaml_names_line(tmp_path):
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_profile(path)


def test_unknown_profile_lists_shipped():
    with pytest.raises(ConfigError, match="devcluster"):
        load_profile("no-such-cluster")


def test_switch_tree_rejects_unknown_nodes(tmp_path):
    path = _write(tmp_path, BASE + "network:\n  switches:\n    leaves: [{name: l1, nodes: 'x[1-2]'}]\n")
    with pytest.raises(ConfigError, match="network.switches.leaves\\[0\\].nodes"):
        load_profile(path)
