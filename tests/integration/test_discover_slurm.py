"""The dev-cluster half of test_discover.py (marked slurm)."""
from __future__ import annotations

import copy

import pytest
from conftest import REPO

from hpcorch.cluster import discover as d
from hpcorch.spec.yamlio import parse_yaml


def _semantic(view: d.View) -> tuple:
    """What must agree, without node type names: each host's shape (arch aside: a profile may
    leave it to its default), partitions, switches."""
    hosts = {h: (s.cpus, s.memory_mb, s.gpu_count, s.gpu_type, s.features, s.threads_per_core)
             for h, (_, s) in view.hosts.items()}
    return hosts, view.partitions, view.leaves, view.spines


def _loaded(path_or_name):
    from hpcorch.spec.profile import load_profile

    return load_profile(path_or_name)


@pytest.mark.slurm
def test_discover_reproduces_the_devcluster_profile(slurm, tmp_path):
    path = tmp_path / "discovered.yaml"
    path.write_text(d.discover(runner=slurm.run, name="devcluster"))
    assert _semantic(d.profile_view(_loaded(path))) == _semantic(d.profile_view(_loaded("devcluster")))


def _without_host(data: dict, host: str) -> dict:
    from hpcorch.spec.units import compress_hostlist, expand_hostlist

    def drop(expr):
        return compress_hostlist([h for h in expand_hostlist(expr) if h != host])

    data = copy.deepcopy(data)
    for part in data["partitions"]:
        if part.get("node_groups"):
            part["node_groups"] = [dict(g, nodes=drop(g["nodes"])) for g in part["node_groups"] if drop(g["nodes"])]
        else:
            part["nodes"] = drop(part["nodes"])
    for leaf in data["network"]["switches"]["leaves"]:
        leaf["nodes"] = drop(leaf["nodes"])
    return data


@pytest.mark.slurm
def test_diff_reports_injected_drift(slurm, tmp_path):
    from hpcorch.spec.yamlio import dump_yaml

    raw = parse_yaml((REPO / "hpcorch/profiles/devcluster.yaml").read_text(), "devcluster")
    assert d.diff_profile("devcluster", runner=slurm.run) == []

    removed = tmp_path / "removed.yaml"
    removed.write_text(dump_yaml(_without_host(raw, "node4")))
    lines = d.diff_profile(str(removed), runner=slurm.run)
    assert "nodes node4: on the cluster, not in the profile" in lines

    changed = copy.deepcopy(raw)
    first = next(iter(changed["node_types"]))
    changed["node_types"][first]["gpus"]["count"] = 2
    path = tmp_path / "gres.yaml"
    path.write_text(dump_yaml(changed))
    lines = d.diff_profile(str(path), runner=slurm.run)
    assert any(f"(node type {first}): gpus.count 2 in the profile, 4 on the cluster" in line for line in lines), lines


@pytest.mark.parametrize("gres_type, mig", [("1g.10gb", "1g.10gb"), ("1g.10gb+me", "1g.10gb+me"),
                                            ("9g.10gb", None), ("a100", None)])
def test_mig_slices_are_recognised_by_the_loaders_rule(gres_type, mig):
    """Discover marks a GRES type as MIG exactly when the profile loader would accept it as one,
    so a draft never holds a MIG profile the loader refuses (or misses one it knows)."""
    shape = d.Shape(cpus=64, memory_mb=512000, gpu_count=7, gpu_type=gres_type, features=(),
                    threads_per_core=1, arch="x86_64")
    assert d._node_type_data(shape)["gpus"].get("mig") == mig
