"""Node ranges (``resources.nodes: M-N``): parsing, the valid counts, the plan and the script."""
import os
import subprocess

import pytest
from conftest import run_cli

from hpcorch.errors import ConfigError, PlanError
from hpcorch.plan.plan import make_plan, summarize
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.job import job_to_dict, load_job
from hpcorch.spec.noderange import largest_valid, parse_nodes
from hpcorch.spec.profile import load_profile
from hpcorch.spec.yamlio import dump_yaml

# One rank per node, one sequence per micro-batch: global_batch 16 runs on 1, 2, 4, 8 or 16 nodes.
TINY = ["resources.tasks_per_node=1", "trainer.global_batch=16", "trainer.micro_batch=1"]


def _tiny(nodes, *more):
    return load_job("gpt-tiny", [f"resources.nodes={nodes}", *TINY, *more])


@pytest.mark.parametrize("value, expected", [
    (3, (3, 3)), ("2-4", (2, 4)), (" 2 - 4 ", (2, 4)), ({"min": 1, "max": 3}, (1, 3)), ("4", (4, 4)),
])
def test_forms_parse(value, expected):
    assert parse_nodes(value) == expected


@pytest.mark.parametrize("text, expected", [
    ("4-2", "min <= max"), ("0-3", "positive"), ("a-b", "'M-N'"), ("{min: 2}", "{min: M, max: N}"),
    ("{min: 2, max: x}", "{min: M, max: N}"), ("1-70000", "at most 65533"), ("0", "positive"),
    ("[1, 2]", "{min: M, max: N}"), ("{max: 1, min: 3}", "min <= max"), ("2-", "'M-N'"),
    ("{min: 1, max: 2, x: 1}", "{min: M, max: N}"), ("2.5", "'M-N'"), ("true", "'M-N'"),
    ("null", "'M-N'"), ("'²'", "'M-N'"), ("'٣'", "'M-N'"), ("'" + "1" * 5000 + "'", "'M-N'"),
    ("{min: true, max: 2}", "{min: M, max: N}"),
], ids=lambda v: v[:20])
def test_bad_forms_are_one_line_naming_the_key(tmp_path, text, expected):
    path = tmp_path / "job.yaml"
    path.write_text(f"name: x\nresources: {{nodes: {text}}}\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.key == "resources.nodes" and expected in info.value.message
    assert "\n" not in str(info.value)


# Each bad value through the real CLI, as --set and in a job file: one line, exit 2.
BAD_CLI = ["4-2", "0-3", "a-b", "{min: 2}", "{max: 1, min: 3}", "{min: 1, max: 2, x: 1}", "2-", "2.5",
           "true", "1-70000", "[1, 2]", "null", "²", "'" + "1" * 5000 + "'"]


@pytest.mark.parametrize("value", BAD_CLI, ids=lambda v: v[:20])
def test_bad_values_through_the_cli_are_one_line_exit_2(tmp_path, value):
    got = run_cli("plan", "jobs/gpt-tiny.yaml", "-p", "devcluster", "--set", f"resources.nodes={value}")
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr[-2000:]
    (line,) = got.stderr.strip().splitlines()
    assert "(--set resources.nodes): resources.nodes: expected " in line and len(line) < 400
    path = tmp_path / "job.yaml"
    path.write_text(f"name: x\nresources: {{nodes: {value}}}\n")
    got = run_cli("plan", path, "-p", "devcluster")
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr[-2000:]
    (line,) = got.stderr.strip().splitlines()
    assert f"{path}: resources.nodes: expected " in line and len(line) < 400


def test_valid_counts_and_the_range_ends_move_to_them():
    job = _tiny("1-5")
    res = job.resources
    assert job.node_counts == [1, 2, 4] and job.nodes_asked == (1, 5)
    assert (res.nodes_min, res.nodes, res.nodes_directive, res.is_range) == (1, 4, "1-4", True)
    # the global batch as written on every count: accumulation re-derived
    assert [(job.layout_on(n).dp, job.layout_on(n).accumulation) for n in job.node_counts] == [(1, 16), (2, 8), (4, 4)]
    assert job.layout.world_size == 4  # the plan's layout: the most nodes


def test_dict_form_and_round_trip(tmp_path):
    job = load_job("gpt-tiny", ["resources.nodes={min: 2, max: 4}", *TINY])
    assert job.resources.nodes_directive == "2-4"
    path = tmp_path / "job.yaml"
    path.write_text(dump_yaml(job_to_dict(job)))
    again = load_job(path)
    assert (again.resources.nodes_min, again.resources.nodes, again.node_counts) == (2, 4, [2, 4])
    plain = load_job("gpt-tiny")
    assert job_to_dict(plain)["resources"]["nodes"] == 1 and plain.node_counts == [1]


def test_a_range_without_a_valid_count_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        _tiny("5-7")
    assert info.value.key == "resources.nodes"
    assert "none of 5-7" in info.value.message and "valid counts nearby: 2, 4, 8, 16" in info.value.message


def test_a_single_count_keeps_its_own_error():
    with pytest.raises(ConfigError) as info:
        _tiny(3)
    assert info.value.key == "trainer.global_batch"


def test_largest_valid():
    assert largest_valid([1, 2, 4], 3) == 2 and largest_valid([2, 4], 4) == 4 and largest_valid([2, 4], 1) is None


def test_plan_lists_the_counts_and_warns_of_unusable_ones():
    plan = make_plan(_tiny("1-4"), load_profile("devcluster"), run_dir="/r")
    summary = summarize(plan)
    assert summary["nodes"] == "1-4" and summary["node_counts"] == [1, 2, 4]
    notes = [v for k, v in summary.items() if k.startswith("note")]
    assert any("can run on 1 (dp 1, accumulation 16), 2 (dp 2, accumulation 8), 4 (dp 4, accumulation 4)" in n
               for n in notes)
    assert any("cannot run on 3 nodes" in w for w in plan.warnings)
    plain = make_plan(load_job("gpt-tiny"), load_profile("devcluster"), run_dir="/r")
    assert "node_counts" not in summarize(plain) and not any("cannot run on" in w for w in plain.warnings)


def test_site_minimum_is_checked_against_the_range_min():
    from hpcorch.spec.catalog import find
    from hpcorch.spec.profile import ClusterProfile
    from hpcorch.spec.schema import build
    from hpcorch.spec.yamlio import read_yaml

    data = read_yaml(find("profiles", "devcluster"))
    data["partitions"][0]["min_nodes"] = 2
    profile = build(ClusterProfile, data, "devcluster.yaml")
    with pytest.raises(PlanError) as info:
        make_plan(_tiny("1-4"), profile, run_dir="/r")
    assert info.value.key == "resources.nodes" and "asks for 1 node" in info.value.message
    make_plan(_tiny("2-4"), profile, run_dir="/r")


def test_script_asks_for_the_range_and_shrinks_to_a_valid_count():
    script = render_sbatch(make_plan(_tiny("2-4"), load_profile("devcluster"), run_dir="/r"))
    assert "#SBATCH --nodes=2-4\n" in script
    assert "for count in 4 2; do" in script
    assert 'scontrol update "JobId=${SLURM_JOB_ID}" "NumNodes=${HPCORCH_NODES}"' in script
    assert 'source /r/resize/"slurm_job_${SLURM_JOB_ID}_resize.sh"' in script
    assert 'srun --nodes="$HPCORCH_NODES" --ntasks="$HPCORCH_NODES" --ntasks-per-node=1' in script
    # The training step: one node launcher per node it runs on, forking that node's ranks.
    assert 'srun --nodes="$HPCORCH_NODES" --ntasks="$HPCORCH_NODES" --ntasks-per-node=1 --cpus-per-task=' in script
    assert "-m hpcorch.batch.nodelaunch /r/submitit/%j --tasks-per-node 1 " in script
    # Not in the header: Slurm would derive the tasks from the range's minimum and allocate only that.
    assert "#SBATCH --ntasks-per-node" not in script
    plain = render_sbatch(make_plan(load_job("gpt-tiny"), load_profile("devcluster"), run_dir="/r"))
    assert "HPCORCH_NODES" not in plain and "#SBATCH --nodes=1\n" in plain


def _shrink_block(script: str) -> str:
    """The script's node-range block, from the first HPCORCH_NODES to HPCORCH_TASKS."""
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("HPCORCH_NODES="))
    end = next(i for i, line in enumerate(lines) if line.startswith("HPCORCH_TASKS="))
    return "\n".join(lines[start:end + 1])


@pytest.mark.parametrize("allocated, nodes, shrunk", [(4, 4, False), (3, 2, True), (2, 2, False)])
def test_the_shrink_block_runs_in_bash(tmp_path, allocated, nodes, shrunk):
    """The block as bash runs it, with a stand-in scontrol that writes what Slurm writes (the
    real one: tests/integration/test_noderange_slurm.py)."""
    script = render_sbatch(make_plan(_tiny("2-4"), load_profile("devcluster"), run_dir=str(tmp_path / "run")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text('#!/bin/bash\necho "$@" >> "$CALLS"\nn=${3#NumNodes=}\n'
                    'echo "export SLURM_JOB_NUM_NODES=$n" > "slurm_job_${SLURM_JOB_ID}_resize.sh"\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    body = f"set -euo pipefail\n{_shrink_block(script)}\necho \"$HPCORCH_NODES $HPCORCH_TASKS $SLURM_JOB_NUM_NODES\"\n"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NUM_NODES": str(allocated), "CALLS": str(calls)}
    env.pop("SLURM_ARRAY_JOB_ID", None)
    out = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(nodes), str(nodes), str(nodes if shrunk else allocated)]
    assert calls.exists() == shrunk
    if shrunk:
        assert calls.read_text().split() == ["update", "JobId=7", f"NumNodes={nodes}"]
        assert "handing the others back" in out.stderr


def test_a_range_plans_on_the_nodes_left_after_quarantine():
    """A range needs only its fewest valid count of usable nodes: with one node quarantined a
    1-4 job (counts 1, 2, 4) is planned, excludes the node and says it starts on 2; a plain count
    that no longer fits is refused as before, and a range whose minimum no longer fits too."""
    profile = load_profile("devcluster")
    hosts = profile.partitions[0].hosts
    plan = make_plan(_tiny("1-4"), profile, run_dir="/r", quarantined={hosts[-1]: "preflight: gpu"})
    assert plan.exclude == hosts[-1]
    assert any("3 of the range's 1-4 are usable now" in n and "largest valid count they hold (2)" in n
               for n in plan.notes)
    with pytest.raises(PlanError) as info:
        make_plan(_tiny("4"), profile, run_dir="/r", quarantined={hosts[-1]: "preflight: gpu"})
    assert "asks for 4 nodes" in info.value.message
    with pytest.raises(PlanError) as info:
        make_plan(_tiny("2-4"), profile, run_dir="/r", quarantined={h: "x" for h in hosts[1:]})
    assert "asks for at least 2 (2-4) nodes" in info.value.message and "quarantined" in info.value.message
