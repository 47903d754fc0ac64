"""Training on a mixture of prepared datasets with real gloo ranks: exact resume, and a resume
on another world size that sees every sample exactly once."""
import json
import signal

import pytest
from datahelp import documents, write_dataset
from trainhelp import losses, summary, traced_samples, train, train_and_signal

pytestmark = pytest.mark.timeout(600)

# 12 sequences a step: 6 on each of 2 ranks, 4 on each of 3, 12 on 1 (micro batch 2).
BATCH = ("trainer.global_batch=12",)


@pytest.fixture(scope="module")
def mixed_job(tmp_path_factory):
    """A tiny job on two prepared datasets (uint16 and int32 shards), weights 3:1; the small
    one runs out and repeats within the 24 steps."""
    root = tmp_path_factory.mktemp("mixed")
    web = write_dataset(root / "web", documents(300, 1, 0, 250), shards=3)
    code = write_dataset(root / "code", documents(40, 2, 250, 500), dtype="int32", shards=2)
    job = root / "mixed.yaml"
    job.write_text("name: mixed\nresources: {tasks_per_node: 2, time: '15'}\n"
                   "trainer:\n  model: {layers: 2, heads: 4, width: 64, seq_len: 64, vocab: 512}\n"
                   f"  data: {{source: prepared, tokenizer: toy, val_fraction: 0.1,\n"
                   f"         mix: [{{path: {web}, weight: 3}}, {{path: {code}, weight: 1}}]}}\n")
    return job


@pytest.fixture(scope="module")
def reference(mixed_job, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    out = train(run, 2, *BATCH, job=str(mixed_job))
    assert out.returncode == 0, out.stdout + out.stderr
    return run


def test_stop_and_resume_on_mixed_shards_is_exact(mixed_job, reference, tmp_path):
    first = train_and_signal(tmp_path, 9, 2, signal.SIGTERM, *BATCH, job=str(mixed_job))
    assert first.returncode == 3, first.stdout
    stopped = json.loads((tmp_path / "progress.json").read_text())["step"]
    assert stopped < 24
    second = train(tmp_path, 2, *BATCH, job=str(mixed_job))
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resumed at step {stopped}" in second.stdout
    assert losses(tmp_path) == losses(reference)
    assert summary(tmp_path)["weights_sha256"] == summary(reference)["weights_sha256"]


def _expected(job_path, steps):
    from trainhelp import TINY

    from hpcorch.spec.job import load_job
    from hpcorch.train.data import DataSource

    job = load_job(job_path, TINY + list(BATCH))
    order = DataSource(job.trainer.data, job.trainer.model.seq_len, job.trainer.seed).train
    return {s: sorted(order.sample_id(p) for p in range((s - 1) * 12, s * 12)) for s in steps}


@pytest.mark.parametrize("after", [3, 1])
def test_resume_on_another_world_size_sees_every_mixed_sample_once(mixed_job, tmp_path, after):
    trace, run = tmp_path / "trace", tmp_path / "run"
    env = {"HPCORCH_SAMPLE_TRACE": str(trace)}
    first = train(run, 2, *BATCH, "trainer.steps=12", env=env, job=str(mixed_job))
    assert first.returncode == 0, first.stdout + first.stderr
    second = train(run, after, *BATCH, "trainer.steps=24", env=env, job=str(mixed_job),
                   flags=("--allow-config-change",))  # a longer schedule
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed at step 12" in second.stdout
    got = traced_samples(trace)
    assert sorted(got) == list(range(1, 25))  # every step trained exactly once
    assert got == _expected(mixed_job, range(1, 25))  # the same global sample sequence
    assert summary(run)["world_size"] == after
