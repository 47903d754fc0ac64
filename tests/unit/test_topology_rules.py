"""Rules Slurm enforces on switch trees, partitions, constraints and exclusions; hostlist bounds
and round trips at scale."""
import tracemalloc

import hostlist as oracle  # python-hostlist: an independent implementation to compare against
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcorch.cluster.slurmconf import topology_conf
from hpcorch.errors import ConfigError, PlanError
from hpcorch.plan.nodefit import constraint_features
from hpcorch.plan.plan import make_plan
from hpcorch.spec import units
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile

PROFILE = """
name: t
scheduler: slurm
node_types:
  g: {{cpus: 8, memory_mb: 8000, features: [h100, ib], gpus: {{count: 4}}}}
  c: {{cpus: 8, memory_mb: 8000, features: [cpu]}}
partitions:
  - {{name: gpu, nodes: "g[01-64]", node_type: g, default: true}}
  - {{name: cpu, nodes: "c[1-8]", node_type: c}}
{extra}
"""


def _profile(tmp_path, extra="", **replace):
    text = PROFILE.format(extra=extra)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def _tree(leaves, spines=()):
    """A network section: leaves as (name, nodes), spines as (name, [children])."""
    lines = ["network:", "  switches:", "    leaves:"]
    lines += [f"      - {{name: {n}, nodes: \"{h}\"}}" for n, h in leaves]
    if spines:
        lines += ["    spines:"] + [f"      - {{name: {n}, switches: [{', '.join(c)}]}}" for n, c in spines]
    return "\n".join(lines)


def _error(path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    return info.value


GOOD_LEAVES = [("l1", "g[01-32]"), ("l2", "g[33-64]"), ("l3", "c[1-8]")]


def test_a_good_tree_loads_and_spines_are_one_short_field(tmp_path):
    prof = load_profile(_profile(tmp_path, _tree(GOOD_LEAVES, [("s1", ["l1", "l2"]), ("top", ["s1", "l3"])])))
    text = topology_conf(prof)
    assert "SwitchName=s1 Switches=l[1-2]" in text and "SwitchName=top Switches=l3,s1" in text


def test_leaves_without_spines_may_be_islands(tmp_path):
    load_profile(_profile(tmp_path, _tree(GOOD_LEAVES)))


@pytest.mark.parametrize("leaves, spines, key, expected", [
    (GOOD_LEAVES[:2] + [("l1", "c[1-8]")], [], "leaves[2].name", "duplicate switch 'l1' (already leaves[0])"),
    (GOOD_LEAVES, [("l2", ["l1"])], "spines[0].name", "duplicate switch 'l2' (already leaves[1])"),
    (GOOD_LEAVES, [("s", ["l1", "l2", "l3"]), ("s", ["l1"])], "spines[1].name", "duplicate switch 's'"),
    (GOOD_LEAVES, [("s", ["l1", "s", "l2", "l3"])], "spines[0].switches[1]", "spine 's' lists itself"),
    (GOOD_LEAVES, [("s", [])], "spines[0].switches", "at least one child switch"),
    (GOOD_LEAVES, [("s", ["l1", "l9"])], "spines[0].switches[1]", "known switch, got 'l9'"),
    (GOOD_LEAVES, [("a", ["l1", "b"]), ("b", ["l2", "c"]), ("c", ["l3", "a"])], "spines[0].switches",
     "cycle among spines: a -> b -> c -> a"),
    (GOOD_LEAVES, [("top", ["a"]), ("a", ["l1", "b"]), ("b", ["l2", "l3", "a"])], "spines[0].switches",
     "cycle among spines: a -> b -> a"),
    (GOOD_LEAVES, [("s1", ["l1"]), ("s2", ["l2", "l3"])], "spines", "got 2 roots (s1, s2)"),
    (GOOD_LEAVES, [("s1", ["l1", "l2"])], "spines", "got 2 roots (l3, s1)"),
    (GOOD_LEAVES[:2] + [("l3", "")], [], "leaves[2].nodes", "Slurm refuses a leaf switch without nodes"),
    (GOOD_LEAVES + [("l4", "g[30-40]")], [], "leaves[3].nodes",
     "nodes g30, g31, g32 and 8 more are already under leaf 'l1'"),
])
def test_switch_tree_rules(tmp_path, leaves, spines, key, expected):
    err = _error(_profile(tmp_path, _tree(leaves, spines)))
    assert err.key == f"network.switches.{key}"
    assert expected in err.message


def test_many_roots_are_capped_in_the_message(tmp_path):
    leaves = [(f"l{i}", f"g{i:02d}") for i in range(1, 65)]
    err = _error(_profile(tmp_path, _tree(leaves, [("s", ["l1"])])))
    assert "got 64 roots (l2, l3, l4 and 61 more)" in err.message


def test_unknown_leaf_nodes_are_capped_in_the_message(tmp_path):
    err = _error(_profile(tmp_path, _tree([("l1", "x[1-100]")])))
    assert err.key == "network.switches.leaves[0].nodes" and "unknown x1, x2, x3 and 97 more" in err.message


def test_a_host_in_partitions_of_two_node_types_is_refused(tmp_path):
    extra = "  - {name: mixed, nodes: \"c[1-2],g[01-10]\", node_type: c}"
    path = _profile(tmp_path, **{"{{name: cpu, nodes: \"c[1-8]\", node_type: c}}": "", "\n{extra}": ""})
    path.write_text(PROFILE.format(extra="").rstrip() + "\n" + extra + "\n")
    err = _error(path)
    assert err.key == "partitions[2].nodes"
    assert "nodes g01, g02, g03 and 7 more are of node type 'g' in partition 'gpu', not 'c'" in err.message


def test_the_same_host_in_partitions_of_one_type_is_fine(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE.format(extra="  - {name: urgent, nodes: \"g[01-04]\", node_type: g, priority_tier: 9}"))
    prof = load_profile(path)
    assert len(prof.all_hosts()) == 72 and prof.node_type_of("g03") == "g" and prof.hosts_by_type()["c"][0] == "c1"


# ----- hostlist bounds and round trips ----------------------------------------------------------
def test_huge_hostlist_fails_before_allocating():
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"names 1000000 hosts; at most 65536"):
            units.expand_hostlist("gpu[1-1000000]")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # a million names would be ~60 MB: the count comes first
    # Only once that holds: a regression here would take gigabytes, not fail.
    with pytest.raises(ValueError, match=r"names 100000000 hosts; at most 65536 are allowed in one expression"):
        units.expand_hostlist("gpu[1-100000000]")


def test_hostlist_bound_counts_every_element_and_is_a_profile_error(tmp_path):
    with pytest.raises(ValueError, match="names 65537 hosts"):
        units.expand_hostlist("a[1-65536],b1")
    assert len(units.expand_hostlist("a[1-65536]")) == 65536
    err = _error(_profile(tmp_path, **{"c[1-8]": "c[1-70000]"}))
    assert err.key == "partitions[1].nodes" and "at most 65536" in err.message


def test_long_bad_hostlist_is_not_echoed_whole():
    expr = ",".join(f"n{i}" for i in range(5000)) + ",bad;"
    with pytest.raises(ValueError) as info:
        units.expand_hostlist(expr)
    assert len(str(info.value)) < 300 and f"({len(expr)} characters)" in str(info.value)


def test_name_by_name_list_expands_like_its_range():
    names = [f"n{i:05d}" for i in range(1, 16385)]
    assert units.expand_hostlist(",".join(names)) == names == units.expand_hostlist("n[00001-16384]")
    assert units.compress_hostlist(names[::-1]) == "n[00001-16384]"


@pytest.mark.parametrize("hosts, expected", [
    (["n1", "n01", "n2", "n02"], "n[1-2],n[01-02]"),
    (["n1", "n02", "n3"], "n[1,3],n02"),  # n02 is no part of a run written n[1-3]
    (["n9", "n11", "n100", "n007"], "n[007,100],n[9,11]"),  # 100 fits width 3 as well as 1
    (["r1-n1", "r2-n1"], "r1-n1,r2-n1"),  # python-hostlist writes r[1-2]-n1, which Slurm refuses
    (["n099", "n100", "n101"], "n[099-101]"),
    (["n9", "n10", "n8"], "n[8-10]"),
    (["b", "a", "n3", "n1", "n1"], "a,b,n[1,3]"),
    (["r1-n1", "r1-n2", "r2-n1"], "r1-n[1-2],r2-n1"),  # one bracket per element, never r[1-2]-n1
])
def test_compress_forms(hosts, expected):
    assert units.compress_hostlist(hosts) == expected


NAMES = st.builds(lambda p, n, w: f"{p}{n:0{w}d}", st.sampled_from(["n", "gpu", "r1-n", "x.y"]),
                  st.integers(0, 300), st.integers(1, 4)) | st.sampled_from(["login", "a", "b-c"])


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(NAMES, max_size=60))
def test_compress_round_trips(hosts):
    expr = units.compress_hostlist(hosts)
    if hosts:
        assert sorted(units.expand_hostlist(expr)) == sorted(set(hosts))
        assert sorted(oracle.expand_hostlist(expr)) == sorted(set(hosts))
        assert expr == units.compress_hostlist(hosts[::-1])  # sorted: the input order never matters


RANGES = st.tuples(st.integers(0, 120), st.integers(0, 30), st.integers(1, 4)).map(
    lambda t: f"{t[0]:0{t[2]}d}" if t[1] == 0 else f"{t[0]:0{t[2]}d}-{t[0] + t[1]:0{t[2]}d}")
ELEMENTS = st.tuples(st.sampled_from(["n", "gpu", "r2-n"]), st.lists(RANGES, min_size=1, max_size=4)).map(
    lambda t: f"{t[0]}[{','.join(t[1])}]") | NAMES


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(ELEMENTS, min_size=1, max_size=6))
def test_expand_agrees_with_python_hostlist(elements):
    expr = ",".join(elements)
    assert units.expand_hostlist(expr) == oracle.expand_hostlist(expr)
    assert units.count_hostlist(expr) >= len(units.expand_hostlist(expr))


# ----- plan: constraints and exclusions ---------------------------------------------------------
@pytest.mark.parametrize("constraint, names", [
    ("h100", ["h100"]), ("h100&ib", ["h100", "ib"]), ("a|b,c", ["a", "b", "c"]),
    ("[rack1*2&rack2*4]", ["rack1", "rack2"]), ("(h100|a100)&ib", ["h100", "a100", "ib"]),
])
def test_constraint_features(constraint, names):
    assert constraint_features(constraint) == names


def _plan(repo, tmp_path, *overrides, profile_extra=""):
    path = _profile(tmp_path, profile_extra)
    job = load_job(repo / "jobs/gpt-tiny.yaml", ["resources.partition=gpu", *overrides])
    return make_plan(job, load_profile(path), source="job.yaml")


def test_constraint_with_known_features_plans(repo, tmp_path):
    assert _plan(repo, tmp_path, "resources.constraint='[h100*1&ib]'").constraint == "[h100*1&ib]"


@pytest.mark.parametrize("overrides, extra, expected", [
    (["resources.constraint=h100&a100|cpu"], "",
     "'h100&a100|cpu' names features a100, cpu that no node of partition 'gpu' (g) has; its features: h100, ib"),
    ([], "defaults: {constraint: nvme}", "'nvme' (from profile 't''s defaults.constraint) names feature nvme"),
])
def test_unknown_constraint_features_are_refused(repo, tmp_path, overrides, extra, expected):
    with pytest.raises(PlanError) as info:
        _plan(repo, tmp_path, *overrides, profile_extra=extra)
    assert info.value.key == "resources.constraint" and info.value.source == "job.yaml"
    assert expected in info.value.message


def test_local_profiles_ignore_constraints(repo):
    job = load_job(repo / "jobs/gpt-tiny.yaml", ["resources.constraint=h100"])
    assert make_plan(job, load_profile("local")).constraint == "h100"


def test_excluding_unknown_hosts_warns(repo, tmp_path):
    plan = _plan(repo, tmp_path, "resources.exclude=g[01-02],zz[1-5]")
    assert plan.warnings == ["resources.exclude names 5 hosts not in profile 't': zz1, zz2, zz3 and 2 more "
                             "(passed to Slurm as they are)"]
    assert _plan(repo, tmp_path, "resources.exclude=g01").warnings == []


def test_exclusions_leaving_too_few_nodes_are_refused(repo, tmp_path):
    with pytest.raises(PlanError) as info:
        _plan(repo, tmp_path, "resources.nodes=8", "trainer.global_batch=32", "trainer.micro_batch=2",
              "resources.exclude=g[01-57],x1")
    assert info.value.key == "resources.nodes"
    assert "asks for 8 nodes, but partition 'gpu' has 7 after exclusions" in info.value.message


def test_cli_prints_plan_warnings_on_stderr(repo, tmp_path):
    path = _profile(tmp_path)
    out = run_cli("plan", repo / "jobs/gpt-tiny.yaml", "--profile", path, "--json",
                  "--set", "resources.partition=gpu", "--set", "resources.exclude=nowhere1")
    assert out.returncode == 0, out.stderr
    assert "warning: resources.exclude names 1 host not in profile 't': nowhere1" in out.stderr
    assert out.stdout.lstrip().startswith("{")  # stdout stays JSON


def test_install_can_install_only_the_clients(monkeypatch):
    from hpcorch.cluster import devcluster

    ran = []
    monkeypatch.setattr(devcluster.subprocess, "run", lambda cmd, check: ran.append(cmd[-1]))
    devcluster.install(log=lambda _: None, packages=devcluster.CLIENT_PACKAGES)
    assert ran[0].endswith("apt-get install -y slurm-client")
