"""The Llama family through the real trainer on CPU processes (gloo): its layouts against its own
DDP run (three of them with the loss in chunks, ``trainer.loss_chunk``), a tp x sp x FSDP2
checkpoint resharded into pipeline stages and one rank, ``torch.compile``, exact stop and
resume (untied, and tied across pipeline stages), and the refusal of a tensor-parallel degree
that does not divide the key/value heads.

The tolerance is the GPT layouts' (tests/integration/test_parallel_layouts_train.py): the
layouts differ from DDP only by the order of their reductions.
Measured (8 steps, largest relative loss difference from DDP with the loss whole): DDP with
the loss in chunks 8.6e-8; tp2 x sp x FSDP2 9.3e-8 whole, 9.8e-8 in chunks.
"""
import signal

import pytest
from trainhelp import check_reshard, losses, summary, train, train_and_signal

pytestmark = pytest.mark.timeout(900)

TOLERANCE = 2e-6  # relative, per step: the GPT layouts' bar
JOB = "jobs/llama-tiny.yaml"

# 4 layers, 4 query heads sharing 2 key/value heads, width 32: tp2 splits both, pp2 two layers a stage.
MODEL = ["trainer.model.layers=4", "trainer.model.heads=4", "trainer.model.kv_heads=2", "trainer.model.width=32",
         "trainer.model.intermediate=64", "trainer.steps=8", "trainer.checkpoint.interval=4"]

# 20 tokens a chunk: 2 sequences of 32 in chunks of 10, 10, 10 and 2 positions (DDP's loss is whole).
CHUNKED = "trainer.loss_chunk=20"
LAYOUTS = {
    "fsdp4_chunked": ["trainer.sharding=fsdp", CHUNKED],
    "hsdp2x2": ["trainer.parallel.dp_replicate=2", "trainer.parallel.dp_shard=2"],
    "tp2_dp2": ["trainer.parallel.tp=2"],
    "tp2_sp_fsdp2_chunked": ["trainer.parallel.tp=2", "trainer.parallel.sequence_parallel=true",
                             "trainer.sharding=fsdp", CHUNKED],
    "pp2_dp2_chunked": ["trainer.parallel.pp=2", CHUNKED],
}


def run(run_dir, nproc, *sets):
    out = train(run_dir, nproc, *MODEL, *sets, timeout=400, job=JOB)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return losses(run_dir)


def max_rel(got: dict, ref: dict) -> float:
    assert sorted(got) == sorted(ref) == list(range(1, 9))
    return max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Plain DDP on 4 ranks: the reference of every layout."""
    return run(tmp_path_factory.mktemp("llama-ddp4"), 4)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each layout's run on 4 ranks, made once: its run directory."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = tmp_path_factory.mktemp(name)
            run(made[name], 4, *LAYOUTS[name])
        return made[name]
    return get


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_llama_layout_matches_ddp(ddp, uninterrupted, name):
    got = losses(uninterrupted(name))
    assert max_rel(got, ddp) <= TOLERANCE, f"{name}: max relative loss difference {max_rel(got, ddp):.3e}"


def test_a_llama_tp_sp_fsdp_checkpoint_reshards_into_stages_and_one_rank(uninterrupted, tmp_path):
    """tp2 x sp x FSDP2's checkpoints (its kv heads split over tp) load into pp2 x dp2 and one
    rank with the same weights, and pp2 x dp2 goes on from step 4 with its losses."""
    check_reshard(uninterrupted("tp2_sp_fsdp2_chunked"), tmp_path, [("pp2_dp2", 4, LAYOUTS["pp2_dp2_chunked"]), ("one", 1, [])],
                  (4, LAYOUTS["pp2_dp2_chunked"]), 4, TOLERANCE, *MODEL, job=JOB)


def test_llama_compiles(tmp_path):
    """``trainer.compile`` (inductor on CPU; the loss in chunks inside the compiled graph) trains
    2 steps of a 1-layer model with eager's losses. About a minute of compiling on CPU."""
    small = [*MODEL, "trainer.model.layers=1", "trainer.steps=2", CHUNKED]
    eager = train(tmp_path / "eager", 1, *small, timeout=400, job=JOB)
    compiled = train(tmp_path / "compiled", 1, *small, "trainer.compile=true", timeout=400, job=JOB)
    for out in (eager, compiled):
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    got, want = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    assert sorted(got) == sorted(want) == [1, 2]
    assert max(abs(got[s] - want[s]) / want[s] for s in want) <= 1e-5, (got, want)


@pytest.mark.parametrize("sets", [[], ["trainer.model.tied=true", "trainer.parallel.pp=2"]], ids=["ddp", "tied_pp2"])
def test_llama_stop_and_resume_is_exact(tmp_path, sets):
    """Stopped by a signal and resumed: the same losses and weights digest as the uninterrupted
    run (tied: the two pipeline stages' copies of the embedding stay one weight)."""
    ref = tmp_path / "uninterrupted"
    run(ref, 2, *sets)
    stopped = train_and_signal(tmp_path / "resumed", 3, 2, signal.SIGTERM, *MODEL, *sets, timeout=400, job=JOB)
    assert stopped.returncode == 3, stopped.stdout[-3000:]
    run(tmp_path / "resumed", 2, *sets)
    assert losses(tmp_path / "resumed") == losses(ref)
    got, want = summary(tmp_path / "resumed"), summary(ref)
    assert got["weights_sha256"] == want["weights_sha256"] and got["restarts"] == 1


def test_tp_not_dividing_kv_heads_is_one_line(tmp_path):
    out = train(tmp_path, 4, *MODEL, "trainer.model.kv_heads=1", "trainer.parallel.tp=2", timeout=120, job=JOB)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors and "trainer.parallel.tp" in errors[0] and "1 kv_heads" in errors[0], out.stderr
