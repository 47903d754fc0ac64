"""Every layout of ``trainer.parallel`` trains the tiny model on 4 CPU processes (gloo) and its
per-step losses match plain DDP's.

Tolerance, measured (fp32, this model, 12 steps; the same figures over 16 steps): the largest
relative difference of any step's loss from DDP's was 1.1e-7 (fsdp4), 1.0e-7 (tp2 x dp2,
tp2 x pp2, pp4 1f1b), 8.7e-8 (pp2 x dp2), 2.0e-7 (HSDP 2 x 2, not run here); the gradient norms
within 5.2e-7. These are reduction-order roundings (another summation order of the same
gradients). :data:`TOLERANCE` allows 10x that. A lost gradient is far outside it: one tp
rank's shard of one layer's MLP gradient zeroed moves the losses by 1.0e-4 (tp2 x dp2), the
last stage's copy of the tied embedding's gradient zeroed by 8.8e-2 (pp2 x dp2) -- see
:func:`test_a_dropped_gradient_breaks_the_tolerance`.
"""
import random
import signal

import pytest
from trainhelp import check_reshard, losses, summary, train, train_and_signal

pytestmark = pytest.mark.timeout(900)

TOLERANCE = 2e-6  # relative, per step (measured at most 2.0e-7: see above)

# 4 layers, 4 heads, width 32: tp2 splits heads and vocabulary, pp4 gets one layer per stage.
MODEL = ["trainer.model.layers=4", "trainer.model.heads=4", "trainer.model.width=32", "trainer.steps=12",
         "trainer.checkpoint.interval=5"]

LAYOUTS = {
    "fsdp4": ["trainer.sharding=fsdp"],
    "tp2_dp2": ["trainer.parallel.tp=2"],
    "pp2_dp2": ["trainer.parallel.pp=2"],
    "tp2_pp2": ["trainer.parallel.tp=2", "trainer.parallel.pp=2"],
    "pp4_1f1b": ["trainer.parallel.pp=4", "trainer.parallel.pp_schedule=1f1b"],
}


def run(run_dir, *sets, env=None):
    out = train(run_dir, 4, *MODEL, *sets, env=env, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return losses(run_dir)


def max_rel(got: dict, ref: dict) -> float:
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    return max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """Plain DDP on 4 ranks: the reference of every layout."""
    return run(tmp_path_factory.mktemp("ddp4"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each layout's uninterrupted run, made once: its run directory."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = tmp_path_factory.mktemp(name)
            run(made[name], *LAYOUTS[name])
        return made[name]
    return get


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_ddp(ddp, uninterrupted, name):
    got = losses(uninterrupted(name))
    assert max_rel(got, ddp) <= TOLERANCE, f"{name}: max relative loss difference {max_rel(got, ddp):.3e}"


@pytest.mark.parametrize("name", ["tp2_dp2", "pp2_dp2", "tp2_pp2", "pp4_1f1b"])
def test_stop_and_resume_is_exact_in_every_layout(uninterrupted, tmp_path, name):
    """Stopped by a signal at a random step (sharded DCP checkpoint of every rank's part) and
    resumed in the same layout: the same losses and weights, bit for bit."""
    at = random.Random().randint(2, 10)
    stopped = train_and_signal(tmp_path, at, 4, signal.SIGTERM, *MODEL, *LAYOUTS[name], timeout=400)
    assert stopped.returncode == 3, f"stop at {at}: " + stopped.stdout[-3000:]
    run(tmp_path, *LAYOUTS[name])
    ref = uninterrupted(name)
    assert losses(tmp_path) == losses(ref), f"stopped at step {at}"
    assert summary(tmp_path)["weights_sha256"] == summary(ref)["weights_sha256"], f"stopped at step {at}"
    assert summary(tmp_path)["restarts"] == 1


def test_a_tp_pp_checkpoint_reshards_into_other_layouts(uninterrupted, tmp_path):
    """tp2 x pp2's checkpoints load into dp4, tp2 x dp2 and one rank: the same weights before
    any further step (the final one), and training goes on from an earlier one."""
    check_reshard(uninterrupted("tp2_pp2"), tmp_path,
                  [("dp4", 4, []), ("tp2_dp2", 4, LAYOUTS["tp2_dp2"]), ("one", 1, [])], (4, []), 10, TOLERANCE,
                  *MODEL)


def test_a_dropped_gradient_breaks_the_tolerance(ddp, tmp_path):
    """Rank 1 (tp rank 1 of the first replica) loses its shard of one MLP gradient: the
    losses leave the tolerance (measured 1.0e-4, 50x the tolerance)."""
    got = run(tmp_path, "trainer.parallel.tp=2", env={"HPCORCH_DROP_GRAD": "1:blocks.3.mlp.fc.weight"})
    assert max_rel(got, ddp) > 10 * TOLERANCE


@pytest.mark.parametrize("sets, key", [
    (["trainer.parallel.tp=2", "trainer.grad_compression=fp16"], "trainer.grad_compression"),
    (["trainer.parallel.tp=3"], "trainer.parallel.tp"),
])
def test_bad_layout_is_one_line(tmp_path, sets, key):
    out = train(tmp_path, 4, *MODEL, *sets, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors and key in errors[0], out.stderr


def test_interleaved_schedule_holds_two_stages_per_rank(ddp, tmp_path):
    """interleaved_1f1b: 4 stages on pp2 (stages 0 and 2 on the first ranks, 1 and 3 on the
    others), the tied embedding's copies on different ranks than with 1f1b."""
    got = run(tmp_path, "trainer.parallel.pp=2", "trainer.parallel.pp_schedule=interleaved_1f1b")
    assert max_rel(got, ddp) <= TOLERANCE

