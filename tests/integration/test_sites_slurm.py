"""Every srun step runs where the ranks run, on the real dev cluster: a `command` wrapper that
works only when its own argv option and the profile's srun option are both present carries the
pre-flight and the training step; a pre-flight whose interpreter cannot start stops the job
with that reason, not as a node or a floor."""
import json
import stat

import pytest
import yaml
from test_submit import _finish, ctx  # noqa: F401 (fixtures)
from trainhelp import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(480)]

WRAPPER = """#!/bin/bash
# A site's launcher: refuses to run unless srun put the task in MARKER (--chdir, an srun option
# of the profile) and it was given its own option; then it runs the rest of its argv.
[ "$1" = "--site-token=ok" ] || {{ echo "site-wrapper: missing --site-token" >&2; exit 3; }}
shift
[ "$(pwd -P)" = "{marker}" ] || {{ echo "site-wrapper: not started in {marker} (srun option lost)" >&2; exit 3; }}
echo "$SLURM_STEP_ID $*" >> {log}
cd "$SLURM_SUBMIT_DIR"
exec "$@"
"""


def _profile(tmp_path, launch: dict) -> str:
    data = yaml.safe_load((REPO / "hpcorch/profiles/devcluster.yaml").read_text())
    data["launch"] = {**data.get("launch", {}), **launch}
    path = tmp_path / "devcluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _wrapper(tmp_path):
    marker = (tmp_path / "marker").resolve()
    marker.mkdir()
    log = tmp_path / "wrapper.log"
    script = tmp_path / "site-wrapper"
    script.write_text(WRAPPER.format(marker=marker, log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, marker, log


def _submit(ctx, tmp_path, profile, *extra):
    from test_submit import _sets

    run = tmp_path / "run"
    sets = _sets(["trainer.steps=4", "trainer.checkpoint.interval=4", *extra])
    ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", profile, "--run-dir", run, *sets)
    return run, ctx.entry(str(run))


def test_preflight_and_training_both_run_through_the_wrappers_options(ctx, tmp_path):
    script, marker, log = _wrapper(tmp_path)
    profile = _profile(tmp_path, {"wrapper": {"kind": "command", "argv": [str(script), "--site-token=ok"]},
                                  "srun_options": [f"--chdir={marker}"]})
    run, job = _submit(ctx, tmp_path, profile)
    _finish(ctx, job["job_id"])
    reports = list((run / "health" / "attempt-0").glob("*.json"))
    assert len(reports) == 2 and all(json.loads(p.read_text())["ok"] for p in reports)
    lines = log.read_text().splitlines()
    assert sum("hpcorch.batch.health preflight" in ln for ln in lines) == 2, lines  # one task per node
    # One node launcher per node through the wrapper; each forks its node's 2 ranks.
    assert sum("hpcorch.batch.nodelaunch" in ln for ln in lines) == 2, lines
    assert len(list(run.glob("submitit/*/*_log.out"))) == 4  # 2 nodes x 2 ranks


def test_a_preflight_whose_interpreter_cannot_start_stops_with_that_reason(ctx, tmp_path):
    profile = _profile(tmp_path, {"python": "/nonexistent/venv/bin/python"})
    run, job = _submit(ctx, tmp_path, profile)
    assert ctx.slurm.wait_for(job["job_id"], {"FAILED", "COMPLETED"}, timeout_s=120) == "FAILED"
    refused = json.loads((run / "restarts.json").read_text())["refused"]
    assert "interpreter did not start" in refused and "floor" not in refused, refused
    assert json.loads(ctx.cli("nodes", "list", "--json").stdout) == []  # no node blamed


def test_submit_check_probes_hpcorch_where_the_ranks_run(ctx, tmp_path):
    """submit --check: one line saying hpcorch imports through the wrapper and its srun options
    on a compute node; one error line when the image's interpreter is missing."""
    from test_submit import _sets

    script, marker, log = _wrapper(tmp_path)
    profile = _profile(tmp_path, {"wrapper": {"kind": "command", "argv": [str(script), "--site-token=ok"]},
                                  "srun_options": [f"--chdir={marker}"]})
    out = ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", profile, "--run-dir", tmp_path / "run", *_sets(), "--check")
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("hpcorch 0.") and "imports where the ranks run (command wrapper" in line, out.stdout
    assert "checked on a compute node" in line and "-c import hpcorch" in log.read_text()
    bad = _profile(tmp_path, {"python": "/nonexistent/venv/bin/python"})
    out = ctx.cli("submit", "jobs/gpt-tiny.yaml", "-p", bad, "--run-dir", tmp_path / "run2", *_sets(), "--check",
                  expect=2)
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: launch: hpcorch does not import where the ranks run")
