"""trainer.loggers: TensorBoard event files and W&B offline runs written by a real `hpcorch train`
run (restarted once), and a missing package refused with one line before anything starts."""
import json
import signal
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from trainhelp import REPO, train, train_and_signal

from hpcorch.cli.main import main

pytestmark = pytest.mark.timeout(300)
LOGGED = ["trainer.loggers=[tensorboard, wandb]", "trainer.eval_interval=6"]


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder`` (TFRecord framing: length, crc, data, crc),
    with the events a later file purged removed as TensorBoard does (a file_version/purge start
    discards its steps and later ones)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3])):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                for tag in scalars:
                    scalars[tag] = [(s, v) for s, v in scalars[tag] if s < event.step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("wandb")
    run = tmp_path_factory.mktemp("logged") / "run"
    first = train_and_signal(run, 9, 1, signal.SIGTERM, *LOGGED)
    assert first.returncode == 3, first.stdout
    second = train(run, 1, *LOGGED)
    assert second.returncode == 0, second.stdout + second.stderr
    return run


def test_tensorboard_event_files_hold_one_curve_across_the_restart(logged_run):
    scalars = tensorboard_scalars(logged_run / "tensorboard")
    metrics = {}
    for line in (logged_run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        metrics[record["step"]] = record  # the last record of a step is the one that counts
    loss = scalars["train/loss"]
    assert [s for s, _ in loss] == sorted(metrics) == list(range(1, 25))
    assert all(abs(v - metrics[s]["loss"]) < 1e-5 for s, v in loss)
    assert [s for s, _ in scalars["val/loss"]] == [6, 12, 18, 24]
    assert {"train/lr", "train/tokens_per_s", "train/step_time_s", "train/grad_norm"} <= set(scalars)
    assert len(list((logged_run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per process


def test_wandb_offline_runs_are_written_under_the_run_dir(logged_run):
    runs = sorted((logged_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.split("-", 3)[-1] for r in runs}) == 1  # one run id for both processes
    for folder in runs:
        records = list(folder.glob("run-*.wandb"))
        assert len(records) == 1
        data = records[0].read_bytes()
        assert data.startswith(b":W&B") and b"loss" in data and b"tokens_per_s" in data


def test_unknown_logger_names_the_key(tmp_path):
    result = CliRunner().invoke(main, ["plan", str(REPO / "jobs/gpt-tiny.yaml"), "-p", "local",
                                       "--set", "trainer.loggers=[tensorboard, mlflow]"])
    assert result.exit_code == 2
    assert "trainer.loggers[1]: expected one of 'tensorboard', 'wandb', got 'mlflow'" in result.output


@pytest.mark.parametrize("command", ["plan", "train"])
def test_a_missing_package_is_one_line_before_anything_starts(tmp_path, monkeypatch, command):
    from hpcorch.spec import job

    monkeypatch.setattr(job, "find_spec", lambda name: None if name == "wandb" else object())
    args = [command, str(REPO / "jobs/gpt-tiny.yaml"), "--set", "trainer.loggers=[wandb]"]
    args += ["-p", "local"] if command == "plan" else ["--run-dir", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "trainer.loggers: wandb needs the wandb package, which is not installed" in lines[0]
    assert "pip install 'hpcorch[wandb]'" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
