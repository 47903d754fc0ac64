"""A run directory's checkpoint continued under a changed config: refused before any rank
starts, unless accepted with --allow-config-change (then recorded); a model change never."""
import hashlib
import json

import pytest
from trainhelp import train

pytestmark = pytest.mark.timeout(300)

SHORT = ("trainer.steps=6", "trainer.checkpoint.interval=3")
ALLOW = ("--allow-config-change",)


def _snapshot(run):
    """Every file under the run's checkpoints, by content, and the resolved job."""
    files = {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((run / "checkpoints").rglob("*")) if p.is_file()}
    return files, (run / "job.yaml").read_text()


def _events(run, name):
    lines = (run / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _refused(out, *expected):
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ")
    for text in expected:
        assert text in out.stderr, out.stderr


def test_config_change_is_refused_unless_accepted_and_a_model_change_always(tmp_path):
    run = tmp_path / "run"
    assert train(run, 2, *SHORT).returncode == 0
    before = _snapshot(run)

    changed = (*SHORT, "trainer.steps=9", "trainer.optimizer.lr=0.001")
    _refused(train(run, 2, *changed), "the checkpoint at step 6",
             "trainer.optimizer.lr: 0.003 -> 0.001, trainer.steps: 6 -> 9", "pass --allow-config-change")
    assert _snapshot(run) == before  # refused before any rank started: nothing written
    assert not (run / "config_accepted.json").exists()

    accepted = train(run, 2, *changed, flags=ALLOW)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "resumed at step 6" in accepted.stdout and "changed config (accepted)" in accepted.stdout
    [event] = _events(run, "config_change")
    assert event["step"] == 6
    assert event["changes"] == ["trainer.optimizer.lr: 0.003 -> 0.001", "trainer.steps: 6 -> 9"]
    record = json.loads((run / "checkpoints" / "step_000000009" / "COMMITTED").read_text())
    assert record["config"]["trainer.optimizer.lr"] == 0.001  # the new config is the recorded one
    assert train(run, 2, *changed).returncode == 0  # the same config again needs no flag

    after = _snapshot(run)
    _refused(train(run, 2, *changed, "trainer.model.width=64", flags=ALLOW),
             "does not match this job's config (trainer.model.width: 32 -> 64)", "even with --allow-config-change")
    assert _snapshot(run) == after


def test_submit_refuses_before_submitting_and_records_an_accepted_change(tmp_path, monkeypatch):
    from trainhelp import REPO

    import hpcorch.submit.executor as executor
    from hpcorch import service
    from hpcorch.spec.compat import ConfigChanged, training_config
    from hpcorch.state.rundir import COMMIT_MARKER

    class Submitted(Exception):
        pass

    def plan(*overrides):
        return service.plan(REPO / "jobs/gpt-tiny.yaml", "local", list(overrides), run_dir=tmp_path / "run")

    step = plan().run.checkpoint_layout.step_dir(5)
    step.mkdir(parents=True)
    (step / COMMIT_MARKER).write_text(json.dumps({"step": 5, "config": training_config(plan().job)}))
    monkeypatch.setattr(executor, "start", lambda *args: (_ for _ in ()).throw(Submitted()))
    changed = plan("trainer.optimizer.lr=0.001")
    with pytest.raises(ConfigChanged, match=r"trainer.optimizer.lr: 0.003 -> 0.001\); pass --allow-config"):
        service.submit(changed, script="")
    assert changed.run.accepted_config() is None
    with pytest.raises(Submitted):  # accepted: it goes on to submit, the ranks will read the record
        service.submit(changed, script="", allow_config_change=True)
    assert changed.run.accepted_config() == training_config(changed.job)
    with pytest.raises(ConfigChanged, match=r"trainer.model.width: 128 -> 64"):
        service.submit(plan("trainer.model.width=64"), script="", allow_config_change=True)
