import pytest

from hpcorch.errors import ConfigError, PlanError
from hpcorch.plan.plan import make_plan, summarize
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile

JOBS = ["gpt-tiny", "gpt-tiny-gpt2", "gpt2-124m", "gpt-1.3b", "llama-tiny", "llama-tiny-gpt2", "llama-350m", "llama-1b", "llama-8b"]


@pytest.mark.parametrize("name", JOBS)
def test_shipped_jobs_load(repo, name):
    job = load_job(repo / "jobs" / f"{name}.yaml")
    assert job.name == name
    assert job.grad_accum >= 1


def test_tasks_default_to_gpus(repo):
    job = load_job(repo / "jobs/gpt2-124m.yaml")
    assert job.resources.tasks_per_node == job.resources.gpus_per_node == 4


def test_overrides_apply_and_validate(repo):
    job = load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.steps=50", "resources.time=1:00:00"])
    assert job.trainer.steps == 50 and job.resources.time_s == 3600
    with pytest.raises(ConfigError) as info:
        load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.steps=many"])
    assert info.value.key == "trainer.steps" and "integer" in info.value.message
    with pytest.raises(ConfigError, match="unknown key"):
        load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.stpes=5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.steps"])


def _job(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, key, expected", [
    ("name: x\nresources: {nodes: 0}", "resources.nodes", "positive"),
    ("name: x\nresources: {time: 'soon'}", "resources.time", "Slurm time"),
    ("name: x\nresources: {time: UNLIMITED}", "resources.time", "finite"),
    ("name: x\nresources: {mem: lots}", "resources.mem", "memory size"),
    ("name: x\nresources: {exclude: 'n[1-'}", "resources.exclude", "hostlist"),
    ("name: x\nresources: {gpus: 4}", "resources.gpus", "unknown key"),
    ("name: x\ntrainer: {model: {width: 65, heads: 2}}", "trainer.model.width", "multiple of heads"),
    ("name: x\ntrainer: {model: {layers: 100000000}}", "trainer.model.layers", "at most 10,000"),
    ("name: x\ntrainer: {global_batch: 6, micro_batch: 4}", "trainer.global_batch", "multiple of micro_batch"),
    ("name: x\ntrainer: {precision: fp8}", "trainer.precision", "one of"),
    ("name: x\ntrainer: {data: {source: bin}}", "trainer.data.path", "expected a path"),
    ("name: x\ntrainer: {checkpoint: {keep: 0}}", "trainer.checkpoint.keep", "at least 1"),
    ("name: x\ntrainer: {optimizer: {betas: [0.9]}}", "trainer.optimizer.betas", "two numbers"),
    ("name: x\nrequeue: {signal: KILL}", "requeue.signal", "one of"),
    ("name: x\nrequeue: {signal_lead_s: 4000}\nresources: {time: 60}", "requeue.signal_lead_s", "less than"),
    ("name: x\nenvironment: {'A;B': 1}", "environment.A;B", "environment variable name"),
    ("name: 'bad name'", "name", "job name"),
    ("resources: {nodes: 1}", "name", "missing"),
    ("name: x\nresources: {nodes: yes}", "resources.nodes", "a node count"),
    ("name: x\nresources: {partition: 'batch --uid=0'}", "resources.partition", "partition name"),
])
def test_job_errors_name_key(tmp_path, text, key, expected):
    path = _job(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.source == str(path)
    assert info.value.key == key, info.value
    assert expected in info.value.message


def test_yaml_reads_slurm_times_and_floats_as_meant():
    from hpcorch.spec.yamlio import parse_yaml

    data = parse_yaml("t: 2:00:00\nu: 1-00:00:00\nlr: 3e-4\nn: 12\nf: 0.5\nh: 0x10\ns: .\nv: 1.2.3", "t.yaml")
    assert data == {"t": "2:00:00", "u": "1-00:00:00", "lr": 3e-4, "n": 12, "f": 0.5, "h": 16,
                    "s": ".", "v": "1.2.3"}


def test_top_level_not_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_job(_job(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("overrides, key, expected", [
    (["resources.gpus_per_node=5"], "resources.gpus_per_node", "have 4"),
    (["resources.nodes=5", "trainer.global_batch=80"], "resources.nodes", "has 4"),
    (["resources.cpus_per_task=3"], "resources.cpus_per_task", "have 4"),
    (["resources.mem=5G"], "resources.mem", "4000 MB"),
    (["resources.time=2-00:00:00"], "resources.time", "at most 1-00:00:00"),
    (["resources.partition=gpu"], "resources.partition", "batch, urgent"),
    (["resources.nodes=3", "resources.exclude=node[1-2]", "trainer.global_batch=48"], "resources.nodes", "after exclusions"),
])
def test_plan_errors_against_devcluster(repo, overrides, key, expected):
    job = load_job(repo / "jobs/gpt-tiny.yaml", overrides)
    with pytest.raises(PlanError) as info:
        make_plan(job, load_profile("devcluster"), source="jobs/gpt-tiny.yaml")
    assert info.value.key == key and info.value.source == "jobs/gpt-tiny.yaml"
    assert expected in info.value.message


def test_plan_resolves_defaults(repo):
    plan = make_plan(load_job(repo / "jobs/gpt2-124m.yaml"), load_profile("h100-ndr"), run_dir="/r")
    assert (plan.partition.name, plan.account, plan.qos) == ("gpu", "ml-research", "normal")
    assert plan.environment["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    summary = summarize(plan)
    assert round(summary["parameters"] / 1e6, 1) == 123.6  # GPT-2 small with the padded 50304 vocabulary
    assert summary["tokens_per_step"] == 256 * 1024


def test_run_dir_must_be_plain(repo):
    job = load_job(repo / "jobs/gpt-tiny.yaml")
    for bad in ["/tmp/a b", "/tmp/x\n#SBATCH --uid=0", "/tmp/$(id)", "/tmp/%j"]:
        with pytest.raises(PlanError, match="--run-dir"):
            make_plan(job, load_profile("devcluster"), run_dir=bad)


def test_set_typos_blame_the_set_not_the_file(repo):
    with pytest.raises(ConfigError) as err:
        load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.stepz=5"])
    assert "(--set trainer.stepz)" in str(err.value) and "unknown key" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.steps=fifty"])
    assert "(--set trainer.steps)" in str(err.value)


def test_schema_type_hints_match_typing():
    """The schema's cached annotation evaluation gives what typing.get_type_hints gives, for
    every config dataclass."""
    import dataclasses
    import importlib
    import pkgutil
    import typing

    import hpcorch.spec
    from hpcorch.spec.schema import type_hints

    classes = [v for m in pkgutil.iter_modules(hpcorch.spec.__path__)
               for v in vars(importlib.import_module(f"hpcorch.spec.{m.name}")).values()
               if isinstance(v, type) and dataclasses.is_dataclass(v)]
    assert len(classes) > 40
    for cls in classes:
        assert type_hints(cls) == typing.get_type_hints(cls), cls
