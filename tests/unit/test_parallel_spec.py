"""trainer.parallel: every bad layout is one error line naming the file (or the --set), the key
and what was expected, through the real commands; plan places the mesh on the nodes; and
properties of the resolved layout (the rank <-> coordinate maps the trainer builds its mesh on)."""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta

import pytest
import yaml
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcorch.errors import ConfigError, PlanError
from hpcorch.plan.plan import make_plan
from hpcorch.spec.job import load_job
from hpcorch.spec.parallel import MESH_DIMS, ParallelSpec, resolve_layout
from hpcorch.spec.profile import load_profile
from hpcorch.spec.schema import Invalid, set_dotted

SETTINGS = settings(max_examples=200, deadline=timedelta(seconds=2), database=None)

# 4 ranks on one node; 4 layers and 4 heads, so that tp and pp up to 4 are possible.
BASE = {
    "name": "t",
    "resources": {"nodes": 1, "tasks_per_node": 4, "mem": "1000M", "time": 10},
    "trainer": {"model": {"layers": 4, "heads": 4, "width": 64, "seq_len": 32, "vocab": 256},
                "global_batch": 16, "micro_batch": 2, "steps": 5},
}

P = "trainer.parallel."
# (overrides, the key the error names, what it says was expected)
BAD = [
    ([P + "tp=3"], P + "tp", "expected a divisor of the model's 4 heads"),
    ([P + "tp=2", "trainer.model.vocab=255"], P + "tp", "expected a divisor of the vocabulary (255"),
    ([P + "tp=4", P + "pp=2"], P + "pp", "expected tp x pp to divide the world size 4 (nodes x tasks per node)"),
    ([P + "tp=8", "trainer.model.heads=8", "trainer.model.width=64"], P + "tp", "expected tp x pp to divide the world size 4"),
    ([P + "dp_shard=3"], P + "dp_shard", "expected a divisor of the data-parallel ranks = world size 4"),
    ([P + "dp_replicate=2", P + "dp_shard=4"], P + "dp_shard",
     "expected pp x dp_replicate x dp_shard x tp = the world size 4 (nodes x tasks per node), got 1 x 2 x 4 x 1 = 8"),
    ([P + "pp=4", "trainer.model.layers=3"], P + "pp", "expected at most one pipeline stage per layer: 4 stages"),
    ([P + "pp=2", P + "pp_schedule=interleaved_1f1b", P + "pp_stages_per_rank=3"], P + "pp",
     "6 stages (pp 2 x 3 per rank) for 4 layers"),
    ([P + "pp=2", P + "pp_split=[1, 2]"], P + "pp_split", "expected 1 layer indices"),
    ([P + "pp=4", P + "pp_split=[1, 3, 2]"], P + "pp_split", "expected increasing layer indices above 0, got [1, 3, 2]"),
    ([P + "pp=2", P + "pp_split=[0]"], P + "pp_split", "expected increasing layer indices above 0"),
    ([P + "pp=2", P + "pp_split=[4]"], P + "pp_split", "expected layer indices below 4"),
    ([P + "pp=2", P + "pp_microbatches=3"], P + "pp_microbatches",
     "expected a divisor of global_batch / data-parallel ranks = 16 / 2, got 3"),
    ([P + "pp=2", P + "pp_schedule=interleaved_1f1b", P + "pp_microbatches=1"], P + "pp_microbatches",
     "expected a multiple of pp (2) micro-batches for interleaved_1f1b, got 1"),
    ([P + "pp=2", P + "pp_schedule=interleaved_1f1b", "trainer.micro_batch=8"], P + "pp_microbatches",
     "got 1 (global_batch / (micro_batch x data-parallel ranks) = 16 / (8 x 2))"),
    ([P + "pp=4", "trainer.micro_batch=8"], P + "pp_microbatches", "expected at least pp (4) micro-batches for 1f1b"),
    ([P + "pp_stages_per_rank=2", P + "pp=2"], P + "pp_stages_per_rank", "expected 1 for schedule '1f1b'"),
    ([P + "sequence_parallel=true"], P + "sequence_parallel", "expected tp > 1"),
    # torch's Adafactor cannot update DTensor parameters: FSDP, tp, data parallelism in nd layouts
    (["trainer.optimizer.name=adafactor", "trainer.sharding=fsdp"], "trainer.optimizer.name",
     "torch's Adafactor cannot update sharded (DTensor) parameters"),
    (["trainer.optimizer.name=adafactor", P + "tp=2"], "trainer.optimizer.name", "expected adamw for the layout"),
    (["trainer.optimizer.name=adafactor", P + "pp=2"], "trainer.optimizer.name", "expected adamw for the layout"),
    ([P + "tp=4", P + "sequence_parallel=true", "trainer.model.seq_len=30"], P + "sequence_parallel",
     "expected model.seq_len (30) to be a multiple of tp (4)"),
    ([P + "pp_schedule=zero_bubble"], P + "pp_schedule", "expected one of 'gpipe', '1f1b', 'interleaved_1f1b'"),
    ([P + "tpp=2"], P + "tpp", "unknown key; did you mean 'tp'?"),
    ([P + "tp=0"], P + "tp", "expected a positive number, got 0"),
    ([P + "tp=2", "trainer.grad_compression=fp16"], "trainer.grad_compression",
     "expected none for the layout dp_replicate 2 x tp 2 (4 ranks), sharding ddp: compression hooks into plain DDP only"),
    (["trainer.sharding=fsdp", "trainer.grad_compression=fp16"], "trainer.grad_compression", "expected none"),
    ([P + "tp=2", "trainer.global_batch=10"], "trainer.global_batch", "expected a multiple of micro_batch x data-parallel ranks = 2 x 2"),
]
COMMANDS = [["plan", "-p", "devcluster"], ["submit", "-p", "devcluster", "--dry-run"], ["train", "--nproc", "4"]]


def _data(overrides=()) -> dict:
    data = json.loads(json.dumps(BASE))
    for item in overrides:
        key, _, value = item.partition("=")
        set_dotted(data, key, value, "test")
    return data


def _write(tmp_path, overrides=(), name="job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(_data(overrides)))
    return path


def _one_error_line(out, source: str, key: str, expected: str) -> None:
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: {source}: {key}: "), out.stderr
    assert expected in out.stderr, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(BAD)), ids=[c[1].split(".")[-1] + f"-{n}" for n, c in enumerate(BAD)])
def test_bad_layout_in_the_file_is_one_line(tmp_path, i):
    overrides, key, expected = BAD[i]
    path = _write(tmp_path, overrides)
    command = COMMANDS[i % len(COMMANDS)]
    out = run_cli(command[0], path, *command[1:], "--run-dir", tmp_path / "run")
    source = f"{path} (--nproc 4)" if command[0] == "train" else str(path)
    _one_error_line(out, source, key, expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("i", range(len(BAD)), ids=[c[1].split(".")[-1] + f"-{n}" for n, c in enumerate(BAD)])
def test_bad_layout_through_set_names_the_set(tmp_path, i):
    overrides, key, expected = BAD[i]
    path = _write(tmp_path)
    command = COMMANDS[(i + 1) % len(COMMANDS)]
    sets = [a for s in overrides for a in ("--set", s)]
    out = run_cli(command[0], path, *command[1:], *sets, "--run-dir", tmp_path / "run")
    blamed = [s.partition("=")[0] for s in overrides if key == s.partition("=")[0] or key.startswith(s.partition("=")[0] + ".")]
    source = (f"{path} (--set {blamed[-1]})" if blamed else
              f"{path} (--nproc 4)" if command[0] == "train" else str(path))
    _one_error_line(out, source, key, expected)


def test_train_nproc_is_the_world_size(tmp_path):
    path = _write(tmp_path, [P + "tp=2"])
    out = run_cli("train", path, "--nproc", "3", "--run-dir", tmp_path / "run")
    _one_error_line(out, f"{path} (--nproc 3)", P + "tp",
                    "expected tp x pp to divide the world size 3 (nodes x tasks per node), got tp 2 x pp 1 = 2")
    out = run_cli("train", path, "--nproc", "6", "--run-dir", tmp_path / "run")
    _one_error_line(out, f"{path} (--nproc 6)", "trainer.global_batch", "micro_batch x data-parallel ranks = 2 x 3")


def test_tp_across_nodes_is_a_plan_error(tmp_path):
    path = _write(tmp_path, ["resources.nodes=2", "resources.tasks_per_node=2", P + "tp=4"])
    load_job(path)  # a valid job: the world (4) holds tp 4; only the nodes do not
    out = run_cli("plan", path, "-p", "devcluster")
    _one_error_line(out, str(path), P + "tp", "expected a divisor of resources.tasks_per_node (2 ranks per node): "
                                             "a tensor-parallel group must stay inside one node")
    with pytest.raises(PlanError, match="inside one node"):
        make_plan(load_job(path), load_profile("devcluster"))


# ----- every layout is accepted -------------------------------------------------------------------
GOOD = {  # name: (overrides on BASE, mesh description)
    "ddp": ([], "dp_replicate 4, ddp"),
    "fsdp": (["trainer.sharding=fsdp"], "dp_shard 4, fsdp"),
    "hsdp": ([P + "dp_replicate=2", P + "dp_shard=2"], "dp_replicate 2 x dp_shard 2 (4 ranks), nd"),
    "tp x dp": ([P + "tp=2", "trainer.sharding=fsdp"], "dp_shard 2 x tp 2 (4 ranks), nd"),
    "tp x dp, sequence parallel": ([P + "tp=2", P + "sequence_parallel=true"], "dp_replicate 2 x tp 2 (4 ranks), nd"),
    "pp x dp": ([P + "pp=2", "trainer.sharding=fsdp"], "pp 2 x dp_shard 2 (4 ranks), nd"),
    "tp x pp": ([P + "pp=2", P + "tp=2"], "pp 2 x tp 2 (4 ranks), nd"),
    "pp 1f1b": ([P + "pp=4", P + "pp_split=[1, 2, 3]"], "pp 4, nd"),
    "pp interleaved": ([P + "pp=2", P + "pp_schedule=interleaved_1f1b", P + "pp_microbatches=4"], "pp 2 x dp_replicate 2 (4 ranks), nd"),
    "pp gpipe": ([P + "pp=4", P + "pp_schedule=gpipe", "trainer.micro_batch=16"], "pp 4, nd"),
}


@pytest.mark.parametrize("name", GOOD)
def test_every_layout_plans_and_renders(tmp_path, name):
    overrides, mesh = GOOD[name]
    path = _write(tmp_path, overrides)
    out = run_cli("plan", path, "-p", "devcluster", "--run-dir", tmp_path / "run")
    assert out.returncode == 0 and not out.stderr, out.stderr
    rows = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert rows["layout"] == mesh
    script = run_cli("submit", path, "-p", "devcluster", "--dry-run", "--run-dir", tmp_path / "run")
    assert script.returncode == 0 and "#SBATCH --ntasks-per-node=4" in script.stdout, script.stderr


@pytest.mark.parametrize("name", GOOD)
def test_train_accepts_every_layout(tmp_path, monkeypatch, name):
    """`hpcorch train --nproc 4` gets as far as starting 4 ranks on the job it wrote (the ranks'
    training itself is tests/test_layouts.py's)."""
    import hpcorch.train.spawn
    from hpcorch import service

    started = []
    monkeypatch.setattr(hpcorch.train.spawn, "launch_local",
                        lambda job_file, root, nproc, extra, env: started.append((job_file, nproc)) or 0)
    path = _write(tmp_path, GOOD[name][0] + ["resources.tasks_per_node=1"])
    code, _ = service.train(path, 4, run_dir=tmp_path / "run")
    job_file, nproc = started[0]
    assert code == 0 and nproc == 4
    assert load_job(job_file).layout == load_job(path, ["resources.tasks_per_node=4"]).layout


# ----- plan shows the mesh on the nodes ------------------------------------------------------------
def test_plan_prints_the_dev_cluster_tp_dp_mesh(repo):
    out = run_cli("plan", "jobs/gpt-tp-dp.yaml", "-p", "devcluster", "--run-dir", "/tmp/r")
    assert out.returncode == 0 and not out.stderr, out.stderr
    rows = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert rows["layout"] == "dp_shard 2 x tp 2 (4 ranks), nd" and rows["world_size"] == "4"
    assert "node 0             ranks 0-1  dp0 tp0-1\nnode 1             ranks 2-3  dp1 tp0-1\n" in out.stdout
    layout = json.loads(run_cli("plan", "gpt-tp-dp", "-p", "devcluster", "--json").stdout)["layout"]
    assert layout["sizes"] == {"pp": 1, "dp_replicate": 1, "dp_shard": 2, "tp": 2}
    assert layout["accumulation"] == 2 and layout["micro_batch"] == 4
    assert layout["nodes"] == [{"node": 0, "ranks": [0, 1], "dp": [0], "tp": [0, 1]},
                               {"node": 1, "ranks": [2, 3], "dp": [1], "tp": [0, 1]}]
    # the same layout on one machine
    assert load_job(repo / "jobs/gpt-tp-dp.yaml", ["resources.nodes=1", "resources.tasks_per_node=4"]).layout == \
        load_job(repo / "jobs/gpt-tp-dp.yaml").layout


def test_plan_abbreviates_many_nodes_and_lists_stages():
    args = ["plan", "gpt-1.3b", "-p", "h100-ndr", "--set", P + "tp=4", "--set", P + "pp=2"]
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    rows = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert rows["layout"] == "pp 2 x dp_shard 8 x tp 4 (64 ranks), nd"
    assert rows["pp_stages"] == "2 stages, 1f1b, 16 micro-batches; layers 0-11 | 12-23"
    assert re.search(r"^node 1 +ranks 8-15  pp0 dp2-3 tp0-3$", out.stdout, re.M)
    assert re.search(r"^\.\.\. +nodes 2-6$", out.stdout, re.M)
    assert re.search(r"^node 7 +ranks 56-63  pp1 dp6-7 tp0-3$", out.stdout, re.M)
    assert "node 2 " not in out.stdout
    layout = json.loads(run_cli(*args, "--json").stdout)["layout"]
    assert [s["layers"] for s in layout["stages"]] == [[0, 11], [12, 23]]
    assert len(layout["nodes"]) == 8 and layout["nodes"][4] == {
        "node": 4, "ranks": [32, 39], "pp": [1], "dp": [0, 1], "tp": [0, 1, 2, 3]}


def test_tp_on_pcie_gpus_warns(tmp_path, repo):
    text = (repo / "cluster_profiles/h100-ndr.yaml").read_text()
    (tmp_path / "pcie.yaml").write_text(text.replace("name: h100-ndr", "name: pcie").replace("nvlink", "pcie"))
    tp = ["--set", P + "tp=2"]
    out = run_cli("plan", "gpt2-124m", "-p", tmp_path / "pcie.yaml", *tp)
    assert out.returncode == 0
    assert re.search(r"^warning: trainer.parallel.tp 2 on GPUs without NVLink or xGMI: node type \S+ \(pcie\)",
                     out.stderr), out.stderr
    assert "warning" not in run_cli("plan", "gpt2-124m", "-p", tmp_path / "pcie.yaml").stderr  # no tp, no doubt
    assert "warning" not in run_cli("plan", "gpt2-124m", "-p", "h100-ndr", *tp).stderr  # NVLink


# ----- properties of the resolved layout ----------------------------------------------------------
@st.composite
def layouts(draw):
    sizes = {d: draw(st.integers(1, 4)) for d in MESH_DIMS}
    dp = sizes["dp_replicate"] * sizes["dp_shard"]
    micro, accum = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    if sizes["pp"] > 1 and accum < sizes["pp"]:
        accum = sizes["pp"]  # 1f1b needs a micro-batch per stage in flight
    pp_mb = draw(st.none() | st.just(accum))
    given = draw(st.sampled_from(["both", "dp_replicate", "dp_shard", "none"]))
    if given == "none" and sizes["dp_replicate"] > 1 and sizes["dp_shard"] > 1:
        given = "both"
    sharding = "fsdp" if given == "none" and sizes["dp_shard"] > 1 else "ddp"
    spec = ParallelSpec(
        dp_replicate=sizes["dp_replicate"] if given in ("both", "dp_replicate") else None,
        dp_shard=sizes["dp_shard"] if given in ("both", "dp_shard") else None,
        tp=sizes["tp"], pp=sizes["pp"], pp_schedule=draw(st.sampled_from(["gpipe", "1f1b"])),
        pp_microbatches=accum if pp_mb is not None and sizes["pp"] > 1 else None)
    world = 1
    for s in sizes.values():
        world *= s
    layout = resolve_layout(spec, sharding, world, dp * micro * accum, micro)
    return sizes, layout


@SETTINGS
@given(layouts())
def test_resolved_layout_maps_ranks_to_the_mesh(case):
    sizes, layout = case
    world, tp, pp, dp = layout.world_size, layout.tp, layout.pp, layout.dp
    assert layout.sizes == sizes and layout.accumulation * layout.micro_batch * dp > 0
    coords = [layout.coords(r) for r in range(world)]
    # a bijection between ranks and the mesh's points, row-major over MESH_DIMS
    assert len({tuple(c.values()) for c in coords}) == world
    for rank, c in enumerate(coords):
        assert all(0 <= c[d] < sizes[d] for d in MESH_DIMS)
        back = 0
        for d in MESH_DIMS:
            back = back * sizes[d] + c[d]
        assert back == rank
    # tp groups are consecutive ranks (one node's GPUs); pp stages are blocks of dp * tp ranks
    for rank, c in enumerate(coords):
        assert c["tp"] == rank % tp and c["pp"] == rank // (dp * tp)
    # every data-parallel rank reads its share once per tp and pp peer
    assert Counter(layout.dp_rank(r) for r in range(world)) == {i: tp * pp for i in range(dp)}
    for rank in range(world):  # tp peers read the same batch
        assert layout.dp_rank(rank) == layout.dp_rank(rank - rank % tp)


@SETTINGS
@given(layers=st.integers(1, 40), pp=st.integers(1, 8), per_rank=st.integers(1, 3), data=st.data())
def test_stage_layers_partition_the_model(layers, pp, per_rank, data):
    schedule = "interleaved_1f1b" if per_rank > 1 else "1f1b"
    split = None
    if pp * per_rank <= layers and data.draw(st.booleans()) and pp > 1:
        split = sorted(data.draw(st.sets(st.integers(1, layers - 1), min_size=pp * per_rank - 1,
                                         max_size=pp * per_rank - 1)))
    spec = ParallelSpec(pp=pp, pp_schedule=schedule, pp_stages_per_rank=per_rank, pp_split=split)
    try:
        spec.check_model(layers, 4, 256)
    except Invalid as exc:
        assert spec.num_stages > layers and exc.field == "parallel.pp"
        return
    stages = spec.stage_layers(layers)
    assert len(stages) == spec.num_stages
    assert [i for r in stages for i in r] == list(range(layers)) and all(len(r) for r in stages)
    if split is None:
        assert max(map(len, stages)) - min(map(len, stages)) <= 1
    else:
        assert [r.start for r in stages[1:]] == split


@SETTINGS
@given(tp=st.integers(1, 9), pp=st.integers(1, 9), dpr=st.none() | st.integers(1, 9),
       dps=st.none() | st.integers(1, 9), world=st.integers(1, 64), gb=st.integers(1, 64),
       mb=st.integers(1, 8), pmb=st.none() | st.integers(1, 9),
       schedule=st.sampled_from(["gpipe", "1f1b", "interleaved_1f1b"]), sharding=st.sampled_from(["ddp", "fsdp"]))
def test_any_sizes_resolve_or_name_a_key(tp, pp, dpr, dps, world, gb, mb, pmb, schedule, sharding):
    spec = ParallelSpec(dp_replicate=dpr, dp_shard=dps, tp=tp, pp=pp, pp_schedule=schedule, pp_microbatches=pmb)
    try:
        layout = resolve_layout(spec, sharding, world, gb, mb)
    except Invalid as exc:
        assert exc.field == "global_batch" or exc.field.startswith("parallel.")
        assert exc.message.startswith("expected ")
        return
    assert layout.world_size == world
    assert layout.accumulation * layout.micro_batch * layout.dp == gb
    assert (dpr is None or layout.dp_replicate == dpr) and (dps is None or layout.dp_shard == dps)


def test_the_error_keys_name_what_the_user_wrote(tmp_path):
    """In-process too: load_job's ConfigError carries the key (what the CLI prints)."""
    with pytest.raises(ConfigError) as err:
        load_job(_write(tmp_path, [P + "dp_shard=3"]))
    assert err.value.key == P + "dp_shard"


# ----- the layouts page's examples (docs/layouts.md) ---------------------------------------------------
def _readme_layouts(repo) -> str:
    return (repo / "docs" / "layouts.md").read_text()


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def test_readme_layout_examples_plan(repo, tmp_path):
    section = _readme_layouts(repo)
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 7
    kinds = []
    for i, block in enumerate(blocks):
        data = _merge(yaml.safe_load((repo / "jobs/gpt-1.3b.yaml").read_text()), yaml.safe_load(block))
        data["resources"].pop("constraint")  # the examples' node counts, anywhere on the partition
        path = tmp_path / f"example{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        plan = make_plan(load_job(path), load_profile("h100-ndr"), run_dir=tmp_path / "run")
        assert not plan.warnings, (block, plan.warnings)
        kinds.append(plan.job.layout.kind)
    assert kinds == ["ddp", "fsdp", "nd", "nd", "nd", "nd", "nd"]


def test_readme_plan_output_is_real(repo):
    shown = re.search(r"```\n(layout .*?)```", _readme_layouts(repo), re.S)[1]
    out = run_cli("plan", "gpt-1.3b", "-p", "h100-ndr", "--set", P + "tp=4", "--set", P + "pp=2")
    assert shown in out.stdout


@pytest.mark.parametrize("sets", [["trainer.sharding=ddp"], [P + "pp=4"], ["resources.tasks_per_node=1"]])
def test_adafactor_is_accepted_where_parameters_stay_plain_tensors(tmp_path, sets):
    job = load_job(_write(tmp_path), ["trainer.optimizer.name=adafactor", *sets])
    assert job.trainer.optimizer.name == "adafactor"
