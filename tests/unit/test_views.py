"""What `hpcorch ls` and `hpcorch status` print for people (and that --json stays raw)."""
import json

import pytest
from click.testing import CliRunner

from hpcorch.cli.views import jobs_lines, status_lines
from hpcorch.util.display import Column, duration, percent, table

NOW = 1_800_000_000.0

GOODPUT = {"source": "sacct", "unit": "GPU", "allocated_hours": 12.4, "queue_wait_s": 250.0, "attempts": 4,
           "goodput": 0.713, "buckets_s": {"productive": 4140.0, "startup": 310.0, "recomputed": 280.0,
                                           "checkpoint": 95.0, "eval": 120.0, "idle_after_signal": 610.0,
                                           "other": 250.0}, "steps_recomputed": 120}


def _status(**more):
    return {"key": 7, "job_id": "1234", "name": "gpt2-124m", "state": "RUNNING", "step": 1200, "steps": 5000,
            "restarts": 3, "requeues": {"preemption": 2, "timeout": 0, "node_failure": 1},
            "latest_checkpoint": 1000, "loss": 3.21012, "tokens_per_s": 262144.4, "note": None,
            "placement": "2 nodes on 1 leaf switch (leaf1)", "next": None, "run_dir": "/scratch/r", **more}


def _row(key, **more):
    return {"key": key, "job_id": str(1000 + key), "name": "gpt2-124m", "profile": "h100-ndr", "state": "RUNNING",
            "run_dir": f"/scratch/r{key}", "host": None, "step": 1200, "steps": 5000, "submitted": NOW - 15150,
            **more}


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.42, "0.4s"), (9.3, "9.3s"), (45, "45s"), (600, "10m"), (3605, "1h"), (5400, "1h 30m"),
                                           (15150, "4h 12m"), (90061, "1d 1h"), (float("inf"), "-"),
                                           (float("nan"), "-")])
def test_durations_read_as_two_units(seconds, text):
    assert duration(seconds) == text


def test_table_aligns_numbers_right_and_text_left():
    lines = table([Column("n", number=True), Column("name"), Column("last")], [["1", "a", "x"], ["100", "bbb", "y"]])
    assert lines == ["  n  name  last", "  1  a     x", "100  bbb   y"]
    assert percent(None) == "-" and percent(0.7134) == "71.3%" and percent(float("nan")) == "-"


def test_ls_is_an_aligned_table_with_progress_goodput_and_age():
    rows = [_row(7, goodput=0.713), _row(8, state="PENDING (Priority)", step=None, steps=None, goodput=None),
            _row(9, host="login1", step=200, steps=None)]  # no goodput key at all (before helper B's)
    lines = jobs_lines(rows, now=NOW)
    assert lines[0].split() == ["#", "job", "id", "name", "profile", "state", "progress", "goodput", "age", "run",
                                "dir"]
    assert "1,200/5,000" in lines[1] and "71.3%" in lines[1] and "4h 12m" in lines[1]
    assert lines[2].split()[5:9] == ["(Priority)", "-", "-", "4h"]
    assert lines[3].endswith("login1:/scratch/r9") and " 200 " in lines[3]
    # Every column starts at the same place on every line.
    starts = {line.index("/scratch") - (7 if "login1" in line else 0) for line in lines[1:]}
    assert len(starts) == 1 and lines[0].index("run dir") == starts.pop()


def test_status_without_goodput_or_warnings_is_the_facts():
    text = "\n".join(status_lines(_status()))
    assert text.splitlines()[0] == "job 7 gpt2-124m (job id 1234)"
    assert "progress           step 1,200 of 5,000 (24.0%)" in text
    assert "tokens/s           262,144" in text and "loss               3.2101" in text
    assert "restarts           3 (requeued: preemption 2, node failure 1)" in text
    assert "goodput" not in text and "warnings" not in text and "next" not in text


def test_status_shows_goodput_buckets_and_warnings_when_present():
    info = _status(goodput=GOODPUT, warnings=["attempt 2 differs from attempt 0: code"], pulled="/x")
    lines = status_lines(info)
    text = "\n".join(lines)
    assert "goodput  71.3% of 12.40 GPU-hours over 4 attempts (from sacct)" in text
    productive = next(line for line in lines if "productive steps" in line)
    assert productive.split()[-3:] == ["1h", "9m", "71.3%"]
    assert next(line for line in lines if "idle after signal" in line).split()[-1] == "10.5%"
    assert "queue wait" in text and "(not allocated)" in text
    assert lines[-2:] == ["warnings", "  ! attempt 2 differs from attempt 0: code"]
    assert "pulled" in text  # keys this view does not know still show


def test_cli_status_and_ls_render_and_json_stays_raw(monkeypatch):
    from hpcorch import service
    from hpcorch.cli.main import main

    info = _status(goodput=GOODPUT, warnings=["w"])
    monkeypatch.setattr(service, "status", lambda ref: info)
    monkeypatch.setattr(service, "jobs", lambda: [_row(7, goodput=0.5)])
    runner = CliRunner()
    assert json.loads(runner.invoke(main, ["status", "7", "--json"]).output) == info
    assert json.loads(runner.invoke(main, ["ls", "--json"]).output) == [_row(7, goodput=0.5)]
    out = runner.invoke(main, ["status", "7"])
    assert out.exit_code == 0 and "71.3%" in out.output and "! w" in out.output
    out = runner.invoke(main, ["ls"])
    assert out.exit_code == 0 and "50.0%" in out.output and "1,200/5,000" in out.output
