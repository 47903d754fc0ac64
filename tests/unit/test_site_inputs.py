"""Input that used to slip through: a YAML tag contradicting its node, counts without a bound,
numbers past Slurm's ranges, options that change what sbatch/srun do. Each is one line naming
the key the user wrote (never an internal option such as --ib-ports)."""
import copy
import time

import pytest
from trainhelp import REPO

from hpcorch.errors import ConfigError
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import ClusterProfile, load_profile
from hpcorch.spec.schema import build
from hpcorch.spec.yamlio import parse_override, parse_yaml, read_yaml

DEV = read_yaml(REPO / "hpcorch/profiles/devcluster.yaml")


@pytest.mark.parametrize("text, expected", [
    ("a: !!map [1, 2]", "tag !!map expects a mapping, but the value is a list"),
    ("a: !!map x", "tag !!map expects a mapping, but the value is a scalar"),
    ("a: !!seq {b: 1}", "tag !!seq expects a list, but the value is a mapping"),
    ("a: !!seq x", "tag !!seq expects a list, but the value is a scalar"),
    ("a: !!str [1]", "tag !!str expects a scalar, but the value is a list"),
    ("a: !!int {b: 1}", "tag !!int expects a scalar, but the value is a mapping"),
    ("!!map [1]", "tag !!map expects a mapping, but the value is a list"),
])
def test_a_tag_contradicting_its_node_is_one_line(text, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        parse_yaml(text, "f.yaml")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=expected):
        parse_override(text.split(": ", 1)[-1], "--set a")


def _profile_with(path: str, value):
    data = copy.deepcopy(DEV)
    node = data
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    return build(ClusterProfile, data, "p.yaml")


@pytest.mark.parametrize("path, value, key, expected", [
    ("network.infiniband.ports", 2**31, "network.infiniband.ports", "expected at most 254"),
    ("network.infiniband.ports", 1000, "network.infiniband.ports", "expected at most 254"),
    ("partitions.0.priority_tier", 65534, "partitions[0].priority_tier", "expected at most 65533"),
    ("partitions.0.max_time", 2**32 - 2, "partitions[0].max_time", "expected at most 4294967293 minutes"),
    ("partitions.0.max_nodes", 2**32, "partitions[0].max_nodes", "expected at most 4294967293"),
    ("node_types.emu.cpus", 70000, "node_types.emu.cpus", "expected at most 65533"),
    ("node_types.emu.gpus.count", 2**31, "node_types.emu.gpus.count", "expected at most 1024"),
    ("extra_directives", ["--parsable"], "extra_directives[0]", "--parsable changes what sbatch does"),
    ("extra_directives", ["--test-only"], "extra_directives[0]", "--test-only changes what sbatch does"),
    ("extra_directives", ["--wait"], "extra_directives[0]", "sbatch would block until the job ends"),
    ("launch", {"srun_options": ["--help"]}, "launch.srun_options[0]", "--help changes what srun does"),
    ("launch", {"srun_options": ["--vers"]}, "launch.srun_options[0]", "--version changes what srun does"),
])
def test_numbers_and_options_past_what_slurm_takes_are_refused_by_key(path, value, key, expected):
    if path.startswith("node_types.emu"):
        path = path.replace("emu", next(iter(DEV["node_types"])))
        key = key.replace("emu", next(iter(DEV["node_types"])))
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        _profile_with(path, value)
    assert time.monotonic() - start < 5  # refused, not expanded element by element
    assert str(info.value).startswith(f"p.yaml: {key}: ") and expected in str(info.value), str(info.value)
    assert "--ib-ports" not in str(info.value)


@pytest.mark.parametrize("override, key, expected", [
    ("resources.nodes=70000", "resources.nodes", "expected at most 65533"),
    ("resources.tasks_per_node=5000", "resources.tasks_per_node", "expected at most 1024"),
    ("resources.time=4294967294", "resources.time", "Slurm reads 4294967294 minutes"),
    ("resources.mem=999999999999999999999T", "resources.mem", "expected at most 1099511627776 MB"),
    ("resources.extra_directives=[--usage]", "resources.extra_directives[0]", "--usage changes what sbatch does"),
])
def test_job_counts_and_times_within_slurms_ranges(override, key, expected):
    with pytest.raises(ConfigError) as info:
        load_job(REPO / "jobs/gpt-tiny.yaml", [override])
    assert f"{key}: " in str(info.value) and expected in str(info.value), str(info.value)


def test_shipped_profiles_stay_within_the_bounds():
    for name in ("devcluster", "h100-ndr", "a100-hdr", "a100-slingshot", "mi250x-slingshot", "local"):
        load_profile(name)
    for path in sorted((REPO / "tests/data/profiles").glob("*.yaml")):
        load_profile(path)
