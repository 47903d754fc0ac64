"""Array submission's pieces without a scheduler: task lists, completion markers, run lists cut
at MaxArraySize, the rendered array script (run by bash with Slurm's variables) and the local
runner (K at a time)."""
import json
import os
import subprocess
import sys

import pytest

from hpcorch.cluster.slurm import job_ref
from hpcorch.errors import RenderError
from hpcorch.render.sbatch import render_array_script
from hpcorch.state.arraytasks import ArrayTaskError, ArrayTasks, current_task, current_tasks
from hpcorch.submit.array import ArrayError, chunks, plan_arrays, run_local

MARK_SELF_DONE = ("import time; from hpcorch.state.arraytasks import current_task, current_tasks; "
                  "time.sleep(0.3); current_tasks().mark_done(current_task(), {'ok': 1})")


def tasks(tmp_path, n=5):
    return ArrayTasks(tmp_path / "t").create([f"p{i}" for i in range(n)])


def test_markers_done_and_remaining(tmp_path):
    t = tasks(tmp_path)
    assert t.remaining() == ["p0", "p1", "p2", "p3", "p4"]
    t.mark_done("p3", {"loss": 1.5})
    (t.done_dir / "p1.host.1.2.tmp").write_text("{")  # a crashed marker write is not a marker
    assert t.done() == {"p3"} and t.remaining() == ["p0", "p1", "p2", "p4"]
    assert json.loads(t.marker("p3").read_text())["loss"] == 1.5 and t.done_info("p0") == {}


def test_task_list_written_once(tmp_path):
    t = tasks(tmp_path, 3)
    t.create(["p0", "p1", "p2"])  # the same definition again: fine
    with pytest.raises(ArrayTaskError, match="already lists other tasks"):
        t.create(["p0", "p9"])
    with pytest.raises(ArrayTaskError, match="appears twice"):
        ArrayTasks(tmp_path / "u").create(["a", "a"])
    with pytest.raises(ArrayTaskError, match="task id 'a b'"):
        ArrayTasks(tmp_path / "v").create(["a b"])
    with pytest.raises(ArrayTaskError, match="not in"):
        t.write_run_list(["p7"])


@pytest.mark.parametrize("n,size,expected", [(5, 1001, [(0, 5)]), (7, 3, [(0, 3), (3, 3), (6, 1)]),
                                             (6, 3, [(0, 3), (3, 3)]), (0, 3, [])])
def test_chunks_split_at_max_array_size(n, size, expected):
    assert chunks(n, size) == expected


def test_plan_arrays_rerun_is_contiguous(tmp_path):
    t = tasks(tmp_path, 7)
    for done in ("p0", "p2", "p5"):
        t.mark_done(done)
    batches = plan_arrays(t, t.remaining(), max_parallel=2, max_array_size=3)
    assert [b.directive for b in batches] == ["--array=0-2%2", "--array=0-0%2"]
    assert [b.task_ids() for b in batches] == [["p1", "p3", "p4"], ["p6"]]
    assert batches[1].environment(0)["HPCORCH_ARRAY_TASK"] == "p6"
    assert plan_arrays(t, [], 2) == []
    with pytest.raises(ArrayError, match="--max-parallel 0"):
        plan_arrays(t, ["p1"], 0)
    assert plan_arrays(t, ["p1"])[0].directive == "--array=0-0"


def test_rendered_script_selects_the_task_with_offset(tmp_path):
    t = tasks(tmp_path, 5)
    batch = plan_arrays(t, t.ids(), 2, max_array_size=3)[1]
    script = render_array_script(batch, "prep", [sys.executable, "-c", MARK_SELF_DONE], tmp_path / "logs",
                                 ["--time=5"], {"EXTRA": "a b"})
    assert "#SBATCH --array=0-1%2\n" in script and "#SBATCH --time=5\n" in script
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1"}
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=60)
    assert t.done() == {"p4"}  # index 1 + offset 3
    env["SLURM_ARRAY_TASK_ID"] = "2"
    bad = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not in" in bad.stderr
    with pytest.raises(RenderError, match="#SBATCH"):
        render_array_script(batch, "prep", ["true"], tmp_path, ["--time=5\nrm -rf /"])
    with pytest.raises(RenderError, match="variable name"):
        render_array_script(batch, "prep", ["true"], tmp_path, [], {"A;B": "x"})


def test_run_local_k_at_a_time_and_rerun_only_the_rest(tmp_path):
    t = tasks(tmp_path, 5)
    t.mark_done("p1")
    batches = plan_arrays(t, t.remaining(), max_parallel=2, max_array_size=3)
    probe = ("import os, time; from pathlib import Path; d = Path(os.environ['PROBE']); "
             "me = d / os.environ['HPCORCH_ARRAY_TASK']; me.touch(); time.sleep(0.4); "
             "n = len(list(d.iterdir())); me.unlink(); open(os.environ['PROBE'] + '.max', 'a').write(f'{n}\\n'); "
             + MARK_SELF_DONE)
    (tmp_path / "probe").mkdir()
    result = run_local(batches, [sys.executable, "-c", probe], tmp_path / "logs",
                       env={"PROBE": str(tmp_path / "probe")})
    assert result.failed == [] and sorted(result.codes) == ["p0", "p2", "p3", "p4"]
    assert max(int(x) for x in (tmp_path / "probe.max").read_text().split()) <= 2
    assert t.remaining() == [] and plan_arrays(t, t.remaining(), 2) == []


def test_current_task_from_env(tmp_path):
    t = tasks(tmp_path, 4)
    run_list = t.write_run_list(["p2", "p3"])
    env = {"HPCORCH_ARRAY_RUN_LIST": str(run_list), "HPCORCH_ARRAY_OFFSET": "1", "SLURM_ARRAY_TASK_ID": "0",
           "HPCORCH_ARRAY_ROOT": str(t.root)}
    assert current_task(env) == "p3" and current_tasks(env) == t
    with pytest.raises(ArrayTaskError, match="not an array task"):
        current_task({})


def test_job_ref_names_the_array_task():
    # One task of every array has SLURM_JOB_ID == SLURM_ARRAY_JOB_ID: scontrol must get A_i.
    assert job_ref({"SLURM_JOB_ID": "40", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}) == "40_3"
    assert job_ref({"SLURM_JOB_ID": "41"}) == "41"
