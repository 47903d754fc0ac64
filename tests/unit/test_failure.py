"""Classifying a failed step (which node failed first), crash loops, and the quarantine list:
the pure parts of recovery, without a cluster (tests/test_recovery_slurm.py runs them for real)."""
import json
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcorch import protocol
from hpcorch.batch.failure import (
    TRAIN_MARKER,
    classify_preflight,
    classify_training,
    exit_records,
    scheduler_stop,
    srun_ends,
)
from hpcorch.batch.recovery import crash_loop
from hpcorch.state.quarantine import excluded_nodes, lemons
from hpcorch.state.registry import Quarantined, Registry

PEER = "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:17815: Connection reset by peer."


def _err(*lines, earlier=("srun: error: node3: tasks 0-1: Killed",)):
    """A batch stderr log: an earlier attempt's lines, the marker, this attempt's."""
    return "\n".join([*earlier, f"{TRAIN_MARKER} (attempt 1)", *lines, ""])


def test_only_this_attempts_srun_lines_count():
    ends, failed = srun_ends(_err("srun: error: node2: tasks 2-3: Killed",
                                  "srun: launch/slurm: _step_signal: Terminating StepId=469.0",
                                  "srun: error: node1: task 0: Exited with exit code 1",
                                  "srun: error: Node failure on node4"))
    assert [(e.node, e.tasks, e.what) for e in ends] == [("node2", "2-3", "Killed"),
                                                        ("node1", "0", "Exited with exit code 1")]
    assert ends[0].hard and not ends[1].hard and ends[1].exit_code == 1
    assert failed == ["node4"]


def test_the_requeue_signal_before_a_handler_is_the_schedulers_stop_not_a_failure():
    """Tasks killed by the job's requeue signal (USR2) in their first second: a preemption, in
    the training step and in the pre-flight (whose lines end the log, after the last attempt's
    marker); every task ended by SIGTERM or checkpointed: Slurm ends the job itself."""
    import signal

    usr2 = signal.SIGUSR2
    ends, _ = srun_ends(_err("srun: error: node1: tasks 0-1: User defined signal 2",
                             "srun: error: node2: task 2: Exited with exit code 1"))
    f = scheduler_stop(ends, "train", 3, usr2)
    assert f.signalled and not f.protocol_stop and not f.nodes and "User defined signal 2" in f.what
    preflight = _err("srun: error: node9: task 0: User defined signal 2", "hpcorch health: node1: healthy (2.0 s)",
                     "srun: error: node2: task 1: User defined signal 2")
    ends, _ = srun_ends(preflight, "preflight")
    assert [e.node for e in ends] == ["node2"]  # only this pre-flight's own lines
    assert scheduler_stop(ends, "preflight", None, usr2).signalled
    ends, _ = srun_ends(_err("srun: error: node1: task 0: Exited with exit code 3",
                             "srun: error: node2: tasks 2-3: Terminated"))
    assert scheduler_stop(ends, "train", 3, usr2).protocol_stop
    ends, _ = srun_ends(_err("srun: error: node1: task 0: Exited with exit code 1",
                             "srun: error: node2: tasks 2-3: Terminated"))
    assert scheduler_stop(ends, "train", 3, usr2) is None  # a rank's own failure stays a failure


def test_the_killed_node_is_the_culprit_not_its_victims():
    ends, failed = srun_ends(_err("srun: error: node1: task 0: Exited with exit code 1",
                                  "srun: error: node2: tasks 2-3: Killed",
                                  "srun: error: node1: task 1: Terminated"))
    records = [{"rank": 0, "node": "node1", "exit_code": 1, "error": PEER, "time": 1.0}]
    f = classify_training(ends, failed, records, down=[], step=42)
    assert (f.nodes, f.evidence, f.step) == (["node2"], "hard", 42)
    assert "node2: Killed by SIGKILL (the kernel's OOM killer, or a kill -9)" in f.what and not f.clear_error


def test_a_node_slurm_took_down_outweighs_srun_lines():
    ends, _ = srun_ends(_err("srun: error: node1: task 0: Exited with exit code 1"))
    f = classify_training(ends, [], [], down=["node2"], step=7)
    assert (f.nodes, f.evidence) == (["node2"], "hard")


def test_an_error_of_its_own_is_soft_evidence_and_peers_are_ignored():
    records = [{"rank": 3, "node": "node2", "exit_code": 1, "error": PEER, "time": 2.0},
               {"rank": 0, "node": "node1", "exit_code": 1, "error": "RuntimeError: CUDA error: an illegal memory access",
                "time": 1.0}]
    ends, _ = srun_ends(_err("srun: error: node1: task 0: Exited with exit code 1"))
    f = classify_training(ends, [], records, down=[], step=3)
    assert (f.nodes, f.evidence) == (["node1"], "soft")
    assert "illegal memory access" in f.what


def test_ranks_srun_kills_after_an_error_of_their_own_are_not_the_culprits():
    # A loaded machine: the peers did not end within KillWait after srun terminated the step,
    # so srun killed them. The rank's own error came first and stays the cause (a crash loop
    # must keep one signature however the peers ended).
    records = [{"rank": 0, "node": "node1", "exit_code": 1, "error": "RuntimeError: injected", "time": 1.0}]
    ends, _ = srun_ends(_err("srun: error: node1: task 0: Exited with exit code 1",
                             "srun: launch/slurm: _step_signal: Terminating StepId=997.1",
                             "srun: error: node1: task 1: Killed", "srun: error: node2: tasks 2-3: Killed"))
    f = classify_training(ends, [], records, down=[], step=30)
    assert (f.nodes, f.evidence) == (["node1"], "soft") and "injected" in f.what
    # A death reported before that error exit still convicts its node.
    ends, _ = srun_ends(_err("srun: error: node2: tasks 2-3: Killed",
                             "srun: error: node1: task 0: Exited with exit code 1"))
    assert classify_training(ends, [], records, down=[], step=30).nodes == ["node2"]


def test_a_clear_error_is_never_retried_and_a_checkpointed_stop_is_the_protocols():
    records = [{"rank": 1, "node": "node1", "exit_code": protocol.CLEAR_ERROR, "error": "job.yaml: trainer.steps: ...",
                "time": 1.0}]
    assert classify_training([], [], records, [], 5).clear_error
    # run_rank prints its own line and the task records no text: still a clear error, not retried.
    silent = [{"rank": 0, "node": "node1", "exit_code": protocol.CLEAR_ERROR, "error": "", "time": 1.0}]
    f = classify_training([], [], silent, [], 5)
    assert f.clear_error and f.nodes == [] and "exit 2" in f.what
    ends, _ = srun_ends(_err(f"srun: error: node1: task 0: Exited with exit code {protocol.CHECKPOINTED}"))
    assert classify_training(ends, [], [], [], 5).protocol_stop


@settings(max_examples=60, deadline=None)
@given(nodes=st.integers(2, 6), culprit=st.integers(0, 5), order=st.randoms(use_true_random=False))
def test_whatever_order_srun_reports_in_the_killed_node_is_named(nodes, culprit, order):
    culprit %= nodes
    lines, records = [], []
    for n in range(nodes):
        if n == culprit:
            lines.append(f"srun: error: node{n}: tasks {2 * n}-{2 * n + 1}: Killed")
        else:
            lines.append(order.choice([f"srun: error: node{n}: tasks {2 * n}-{2 * n + 1}: Terminated",
                                       f"srun: error: node{n}: task {2 * n}: Exited with exit code 1"]))
            records.append({"rank": 2 * n, "node": f"node{n}", "exit_code": 1, "error": PEER, "time": order.random()})
    order.shuffle(lines)
    ends, failed = srun_ends(_err(*lines))
    assert classify_training(ends, failed, records, [], 9).nodes == [f"node{culprit}"]


def test_preflight_failures_name_nodes_and_checks():
    ok = {"ok": True, "checks": [{"name": "gpus", "ok": True}]}
    bad = {"ok": False, "checks": [{"name": "ib", "ok": False, "detail": "mlx5_0 port 1 is DOWN"}]}
    f = classify_preflight({"node1": ok, "node2": bad, "node3": None}, step=None)
    assert f.nodes == ["node2", "node3"] and f.evidence == "hard"
    assert "node2: ib: mlx5_0 port 1 is DOWN" in f.what and "node3: no report" in f.what
    everyone = classify_preflight({"node1": bad, "node2": bad}, step=None)
    assert everyone.evidence == "unattributable"  # the same check everywhere: a shared cause
    gpu = {"ok": False, "checks": [{"name": "gpus", "ok": False, "detail": "missing: 3"}]}
    two = classify_preflight({"node1": bad, "node2": gpu}, step=None)
    assert (two.nodes, two.evidence) == (["node1", "node2"], "hard")  # two nodes, two faults
    slow = {"ok": False, "checks": [{"name": "allreduce.busbw", "ok": False, "detail": "0.8 GB/s < 100"}]}
    floor = classify_preflight({"node1": slow, "node2": slow}, step=None)
    assert floor.evidence == "unattributable" and "allreduce.busbw" in floor.what
    stuck = {"ok": False, "checks": [{"name": "allreduce.join", "ok": False, "detail": "peer never came"}]}
    dead = classify_preflight({"node1": stuck, "node2": None}, step=None)
    assert (dead.nodes, dead.evidence) == (["node2"], "hard")  # the waiting node is a victim
    assert classify_preflight({"node1": bad}, step=None).evidence == "hard"  # one node: it is the node


def _failure(step, node, what="rank 0 on NODE: RuntimeError: boom"):
    sig = f"train@{step}: " + what.replace("NODE", "NODE")
    return {"step": step, "nodes": [node], "what": what.replace("NODE", node), "signature": sig,
            "lines": ["Traceback (most recent call last):", "RuntimeError: boom"]}


def test_crash_loop_needs_the_same_failure_at_the_same_step_in_a_row():
    same = [_failure(30, "node1"), _failure(30, "node3"), _failure(30, "node4")]
    message = crash_loop(same, 3)
    assert "step 30" in message and "3 times in a row" in message
    assert "node1, node3, node4" in message and "RuntimeError: boom" in message
    assert crash_loop(same[:2], 3) is None
    assert crash_loop([_failure(25, "node1")] + same[1:], 3) is None
    assert crash_loop(same, 0) is None  # turned off


def test_exit_records_sort_oldest_first(tmp_path):
    for rank, t in ((0, 3.0), (1, 1.0)):
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "time": t}))
    (tmp_path / "rank-2.json").write_text("{not json")
    assert [r["rank"] for r in exit_records(tmp_path)] == [1, 0]
    assert exit_records(tmp_path / "missing") == []


def test_quarantine_expires_clears_and_finds_lemons(tmp_path):
    reg = Registry(tmp_path / "r.sqlite")
    reg.quarantine("dev", "node2", "pre-flight: gpus 3 of 4", hours=1, job_id="7")
    reg.quarantine("dev", "node3", "expired already", hours=-1)
    reg.quarantine("other", "node2", "another cluster", hours=1)
    assert [q.node for q in reg.quarantined("dev")] == ["node2"]
    assert list(excluded_nodes("dev", reg)) == ["node2"]
    assert "pre-flight: gpus 3 of 4 (until " in excluded_nodes("dev", reg)["node2"]
    reg.quarantine("dev", "node2", "again", hours=2)  # one active row per node, the newer reason
    assert [(q.node, q.reason) for q in reg.quarantined("dev")] == [("node2", "again")]
    assert ("dev", "node2") in lemons(reg.quarantined("dev", history=True))
    assert reg.release("node2", "dev") == 1 and reg.quarantined("dev") == []
    assert reg.release("node2", "dev") == 0
    assert [q.profile for q in reg.quarantined()] == ["other"]
    week_ago = Quarantined("dev", "node9", "old", time.time() - 8 * 86400, 0)
    assert lemons([week_ago, week_ago]) == set()


def _cli(*args, home, expect=0):
    out = subprocess.run([sys.executable, "-m", "hpcorch.cli.main", *args], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "HPCORCH_HOME": str(home)})
    assert out.returncode == expect, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_plans_exclude_quarantined_nodes_until_cleared(tmp_path):
    Registry(tmp_path / "registry.sqlite").quarantine("devcluster", "node2", "train: tasks 2-3 Killed", hours=1)
    sets = ["--set", "resources.nodes=2", "--set", "trainer.global_batch=32"]
    out = _cli("submit", "gpt-tiny", "-p", "devcluster", *sets, "--dry-run", home=tmp_path)
    assert "#SBATCH --exclude=node2\n" in out.stdout
    shown = _cli("plan", "gpt-tiny", "-p", "devcluster", *sets, home=tmp_path).stdout
    assert "excluding quarantined node node2: train: tasks 2-3 Killed" in shown
    full = _cli("plan", "gpt-tiny", "-p", "devcluster", "--set", "resources.nodes=4", "--set",
                "trainer.global_batch=64", home=tmp_path, expect=2)
    assert full.stderr.count("\n") == 1 and "node2 quarantined" in full.stderr
    listed = _cli("nodes", "list", "--json", home=tmp_path)
    assert [q["node"] for q in json.loads(listed.stdout)] == ["node2"]
    _cli("nodes", "clear", "node2", home=tmp_path)
    assert "--exclude" not in _cli("submit", "gpt-tiny", "-p", "devcluster", *sets, "--dry-run", home=tmp_path).stdout
    again = _cli("nodes", "clear", "node2", home=tmp_path, expect=2)
    assert again.stderr.startswith("error: node 'node2' is not in quarantine")
    # A local profile has no nodes to keep out: no registry is consulted or created.
    local = tmp_path / "fresh"
    _cli("plan", "gpt-tiny", "-p", "local", home=local)
    assert not (local / "registry.sqlite").exists()


@pytest.mark.slow
def test_the_script_runs_preflight_then_training_each_followed_by_recovery(tmp_path):
    sets = ["--set", "resources.nodes=2", "--set", "trainer.global_batch=32"]
    text = _cli("submit", "gpt-tiny", "-p", "devcluster", *sets, "--dry-run", home=tmp_path).stdout
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1"))
    train = next(i for i, ln in enumerate(lines) if ln.startswith("srun ") and "--unbuffered" in ln)
    assert first < train
    assert "-m hpcorch.batch.health preflight --run-dir" in lines[first + 1]
    assert lines[first + 2].strip().endswith("--stage preflight --exit-code $?")
    assert lines[train + 2].strip().endswith("--stage train --exit-code $?")
    assert "--profile devcluster --quarantine-hours 24" in lines[train + 2]
    assert TRAIN_MARKER in lines[train - 1]
    off = _cli("submit", "gpt-tiny", "-p", "devcluster", *sets, "--set", "health.preflight=false", "--dry-run",
               home=tmp_path).stdout
    assert "hpcorch.batch.health" not in off and "--stage train" in off


def test_a_preflight_whose_interpreter_never_started_is_named_as_such():
    from hpcorch.batch.failure import interpreter_failure

    none = {"node1": None, "node2": None}
    err = "srun: error: node1: task 0: Exited with exit code 2\nslurmstepd: error: execve(): python3: No such file"
    assert "interpreter did not start" in interpreter_failure(none, err, 2)
    assert "No module named 'hpcorch'" in interpreter_failure(
        none, "ModuleNotFoundError: No module named 'hpcorch'", 1)
    assert "(exit 127)" in interpreter_failure(none, "", 127)
    assert interpreter_failure(none, "Killed", 1) is None  # silence alone may be a hang or a death
    assert interpreter_failure({"node1": {"ok": False}, "node2": None}, err, 2) is None  # a check ran


def test_the_preflight_refuses_another_hpcorch_than_the_one_that_submitted(tmp_path, capsys):
    import json

    from hpcorch import __version__
    from hpcorch.batch.health.__main__ import main

    run = tmp_path / "run"
    (run / "manifests").mkdir(parents=True)
    (run / "manifests" / "submission.json").write_text(json.dumps({"hpcorch_version": "9.9.0"}))
    assert main(["preflight", "--run-dir", str(run), "--gpus", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: python -m hpcorch.batch.health: hpcorch {__version__} runs here, but hpcorch 9.9.0 "
                   "submitted the job; install hpcorch 9.9.0 where the ranks run (launch.python / the image)")
