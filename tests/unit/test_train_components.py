"""The trainer's components one by one, in this process (a one-rank gloo group where needed)."""
import json
import logging
import signal

import pytest
import torch
from trainhelp import REPO, TINY

from hpcorch import protocol
from hpcorch.spec.job import OptimizerSpec, load_job
from hpcorch.state.rundir import RunDir
from hpcorch.train.faults import SampleTrace, crash_in_save
from hpcorch.train.optim import lr_at
from hpcorch.train.runlog import RunLogger, Sink
from hpcorch.train.state import TrainState


@pytest.fixture
def group(tmp_path):
    """A one-rank gloo process group, and the DistEnv the trainer gets for it."""
    import torch.distributed as dist

    from hpcorch.train.distributed import DistEnv

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield DistEnv(0, 1, 0, torch.device("cpu"), "gloo")
    dist.destroy_process_group()


def tiny_job(*extra):
    return load_job(REPO / "jobs/gpt-tiny.yaml", [*TINY, "resources.tasks_per_node=1", "trainer.global_batch=4",
                                                  *extra])


# ----- optimizer schedule --------------------------------------------------------------------------
def test_lr_warms_up_linearly_then_decays_to_min_lr():
    opt = OptimizerSpec(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert [lr_at(s, opt, 100) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert lr_at(10, opt, 100) == pytest.approx(1e-3)
    assert lr_at(100, opt, 100) == pytest.approx(1e-4) and lr_at(500, opt, 100) == pytest.approx(1e-4)
    decay = [lr_at(s, opt, 100) for s in range(10, 101)]
    assert decay == sorted(decay, reverse=True)


# ----- train state ---------------------------------------------------------------------------------
def test_train_state_round_trips_what_a_checkpoint_holds():
    state = TrainState()
    for _ in range(3):
        state.advance(global_batch=8, seq_len=32)
    state.last_loss, state.restarts = 2.5, 4
    restored = TrainState()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert (restored.step, restored.consumed_samples, restored.tokens, restored.last_loss) == (3, 24, 768, 2.5)
    assert restored.restarts == 0  # counted in progress.json, not in checkpoints


# ----- run logger ----------------------------------------------------------------------------------
class Recorder(Sink):
    def __init__(self):
        self.calls = []

    def on_step(self, record):
        self.calls.append(("step", record["step"]))

    def on_event(self, name, fields):
        self.calls.append(("event", name, fields))

    def on_summary(self, summary):
        self.calls.append(("summary", summary["final_step"]))

    def close(self):
        self.calls.append(("close",))


def _record(step):
    return {"step": step, "loss": 1.5, "lr": 1e-3, "grad_norm": 0.5, "step_time_s": 0.1,
            "tokens_per_s": 1000.0, "mfu": None, "max_mem_mb": 1.0}


def test_run_logger_feeds_every_sink_and_writes_the_run_files(tmp_path, caplog):
    run, state, extra = RunDir(tmp_path), TrainState(), Recorder()
    log = RunLogger(run, state, is_main=True, total_steps=2, log_interval=10, extra_sinks=(extra,))
    with caplog.at_level(logging.INFO, logger="hpcorch.train"):
        log.start(resumed=False, setup="tiny")
        for step in (1, 2):
            state.advance(4, 8)
            state.last_loss = 1.5
            log.step(_record(step))
        log.summary({"final_step": 2, "final_loss": 1.5, "val_loss": 1.6, "weights_sha256": "ab" * 32})
    log.close()
    assert extra.calls[0][:2] == ("event", "process_start")
    assert extra.calls[1:] == [("step", 1), ("step", 2), ("summary", 2), ("close",)]
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == [1, 2]
    assert run.progress() == {"step": 2, "restarts": 0, "steps_recomputed": 0, "loss": 1.5, "job": None, "attempt": 0}
    assert run.summary()["final_step"] == 2
    assert [json.loads(line)["event"] for line in run.events.read_text().splitlines()] == ["process_start"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "hpcorch: starting; tiny"
    assert lines[1].startswith("step      1/2 (50.0%) loss 1.5000")  # step 1 is always shown
    assert lines[-1] == "hpcorch: done at step 2, loss 1.5000, val 1.6000, weights " + "ab" * 8


def test_console_shows_the_share_done_elapsed_time_and_eta(caplog):
    from hpcorch.train.runlog import Console

    console = Console(total_steps=1000, log_interval=100)
    start = 1_000_000.0
    with caplog.at_level(logging.INFO, logger="hpcorch.train"):
        for step in range(1, 201):
            # 2 s a step, and a 40 s checkpoint every 100 steps: the ETA's rate includes it.
            now = start + 2.0 * step + 40.0 * (step // 100)
            console.on_step({**_record(step), "time": now, "step_time_s": 2.0, "mfu": 0.412})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # steps 1, 100, 200
    assert lines[0] == ("step      1/1000 (0.1%) loss 1.5000 lr 1.00e-03 1,000 tok/s mfu 41.2%; "
                        "2.0s elapsed, ETA 33m 18s")  # 999 steps x the step's own 2 s
    # Steps 150..200 took 100 s + one 40 s checkpoint: 2.8 s a step, 800 steps left.
    assert lines[2].endswith("(20.0%) loss 1.5000 lr 1.00e-03 1,000 tok/s mfu 41.2%; 8m elapsed, ETA 37m 20s")


def test_run_logger_counts_restarts_and_recomputed_steps(tmp_path):
    run = RunDir(tmp_path)
    run.progress_file.write_text(json.dumps({"step": 9, "restarts": 1, "steps_recomputed": 2, "loss": 3.0}))
    state = TrainState(step=6)  # the newest checkpoint is older than the furthest step reached
    log = RunLogger(run, state, is_main=True, total_steps=10, log_interval=10)
    log.start(resumed=True, setup="")
    log.close()
    assert (state.restarts, state.steps_recomputed) == (2, 5)
    assert run.progress()["restarts"] == 2


@pytest.mark.parametrize("prior,job,attempt,restarts", [
    (None, "7", 1, 1),                                    # attempt 0 preempted in its first second
    ({"job": "7", "attempt": 0, "restarts": 0}, "7", 1, 1),  # an ordinary requeue
    ({"job": "7", "attempt": 0, "restarts": 0}, "7", 3, 3),  # attempts 1 and 2 never got this far
    ({"job": "7", "attempt": 2, "restarts": 4}, "9", 1, 6),  # resumed as job 9, its attempt 0 stopped early
    ({"restarts": 1}, None, 0, 2),                        # hpcorch train, run again
])
def test_restarts_count_the_attempts_slurm_started_even_those_that_ended_early(tmp_path, monkeypatch, prior, job,
                                                                                attempt, restarts):
    """One count everywhere: restarts.json counts a requeue of an attempt stopped before it wrote
    anything, so summary.json and status count that attempt too (Slurm's restart count)."""
    for name, value in (("SLURM_JOB_ID", job), ("SLURM_RESTART_COUNT", str(attempt))):
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    run = RunDir(tmp_path)
    if prior:
        run.progress_file.write_text(json.dumps({"step": 0, "steps_recomputed": 0, "loss": 3.0, **prior}))
    state = TrainState()
    log = RunLogger(run, state, is_main=True, total_steps=10, log_interval=10)
    log.start(resumed=False, setup="")
    log.close()
    assert state.restarts == restarts and run.progress()["restarts"] == restarts


def test_other_ranks_report_nothing(tmp_path, caplog):
    log = RunLogger(RunDir(tmp_path), TrainState(), is_main=False, total_steps=1, log_interval=1)
    with caplog.at_level(logging.INFO, logger="hpcorch.train"):
        log.start(resumed=False, setup="")
        log.step(_record(1))
        log.info("hidden")
        log.event("first_step", step=1)
    log.close()
    assert list(tmp_path.iterdir()) == [] and caplog.records == []


# ----- faults --------------------------------------------------------------------------------------
def test_crash_hook_only_at_the_asked_step_and_rank(monkeypatch):
    assert crash_in_save(12, 0) is None
    monkeypatch.setenv("HPCORCH_CRASH_IN_SAVE", "12:1")
    assert crash_in_save(12, 0) is None and crash_in_save(6, 1) is None
    assert crash_in_save(12, 1) is not None
    monkeypatch.setenv("HPCORCH_CRASH_IN_SAVE", "12")
    assert crash_in_save(12, 0) is not None and crash_in_save(12, 3) is not None


def test_sample_trace_is_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("HPCORCH_SAMPLE_TRACE", raising=False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # a requeued Slurm attempt
    off = SampleTrace(0)
    off.write(1, [1, 2])
    off.close()
    on = SampleTrace(3, str(tmp_path / "trace"))
    on.write(1, [5, 6])
    on.close()
    assert json.loads((tmp_path / "trace" / "rank3.jsonl").read_text()) == {"step": 1, "rank": 3, "attempt": 2,
                                                                             "samples": [5, 6]}


# ----- stop agreement ------------------------------------------------------------------------------
def test_stop_flag_rides_on_the_loss_all_reduce(group):
    from hpcorch.train.stop import StopAgreement

    stop = StopAgreement((signal.SIGUSR2,), group.device, world_size=1)
    assert stop.reduce_loss(torch.tensor(2.0)) == 2.0 and not stop.agreed and stop.agreed_signal == 0
    stop.on_signal(signal.SIGUSR2)
    assert stop.signal_time is not None
    assert stop.reduce_loss(torch.tensor(3.0)) == 3.0
    assert stop.agreed and stop.agreed_signal == signal.SIGUSR2


# ----- checkpointer and trainer --------------------------------------------------------------------
@pytest.mark.slow
def test_checkpointer_restores_and_refuses_another_job(group, tmp_path):
    from hpcorch.spec.compat import ConfigChanged, training_config
    from hpcorch.train.checkpoint.checkpointer import Checkpointer, CheckpointError
    from hpcorch.train.checkpoint.store import CheckpointStore
    from hpcorch.train.models.gpt.model import GPT

    job = tiny_job()
    module = GPT(job.trainer.model)
    optimizer = torch.optim.AdamW(module.parameters())
    store = CheckpointStore(tmp_path / "ck", 0, 1)
    saved = TrainState(step=6, consumed_samples=24, tokens=768, last_loss=2.0)
    Checkpointer(store, job, 0, module, optimizer, log=print).save(saved)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    state = TrainState()
    assert Checkpointer(store, job, 0, module, optimizer, log=print).restore(state)
    assert state.state_dict() == saved.state_dict()
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with pytest.raises(CheckpointError, match="no committed checkpoint at step 5"):
        Checkpointer(store, job, 0, module, optimizer, log=print).restore(TrainState(), resume_step=5)
    other = tiny_job("trainer.seed=7")
    with pytest.raises(ConfigChanged, match=r"does not match this job's config \(trainer.seed: 1337 -> 7\)"):
        Checkpointer(store, other, 0, module, optimizer, log=print, accepted_config=training_config(other)
                     ).restore(TrainState())
    longer = tiny_job("trainer.steps=99")
    with pytest.raises(ConfigChanged, match="trainer.steps: 24 -> 99.*--allow-config-change"):
        Checkpointer(store, longer, 0, module, optimizer, log=print).restore(TrainState())
    accepted = Checkpointer(store, longer, 0, module, optimizer, log=print, accepted_config=training_config(longer))
    assert accepted.restore(TrainState()) and accepted.config_changes == ["trainer.steps: 24 -> 99"]


@pytest.mark.slow
def test_trainer_creates_every_attribute_in_init_and_stops_on_an_agreed_signal(group, tmp_path):
    from hpcorch.train.trainer import Trainer

    trainer = Trainer(tiny_job("trainer.steps=3"), tmp_path, group, stop_signals=())
    attributes = set(vars(trainer))
    trainer.stop.on_signal(signal.SIGUSR2)  # as if the signal came during step 1
    assert trainer.run() == protocol.CHECKPOINTED
    assert set(vars(trainer)) == attributes
    assert trainer.agreed_signal == signal.SIGUSR2
    assert RunDir(tmp_path).latest_checkpoint() == 1
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in records] == ["process_start", "placement", "first_step", "checkpoint_save",
                                             "signal", "checkpoint_committed"]
    # Every rank's placement, written by rank 0 after the start (one rank here, outside Slurm).
    assert {k: records[1][k] for k in ("rank", "local_rank", "topology_addr")} == {
        "rank": 0, "local_rank": 0, "topology_addr": None}


# ----- the rank entry ------------------------------------------------------------------------------
def test_run_rank_reports_a_clear_error_in_one_line(tmp_path, capsys):
    from hpcorch.train.rank import run_rank

    outcome = run_rank(tmp_path / "missing.yaml", tmp_path / "run", "process")
    assert (outcome.exit_code, outcome.agreed_signal) == (protocol.CLEAR_ERROR, 0)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.yaml" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="scheduler"):
        run_rank(tmp_path / "missing.yaml", tmp_path / "run", "pbs")
