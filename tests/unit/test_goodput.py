"""Goodput arithmetic on synthetic run directories (what the trainer writes, with chosen
times) and synthetic sacct rows; the registry fallback; the switch of the requeue-hold cut;
and the trainer's own records from a real (tiny, one-rank) run."""
import json
from datetime import datetime

import pytest

from hpcorch.observe import goodput as gp
from hpcorch.state.registry import Entry
from hpcorch.state.rundir import RunDir


class Timeline:
    """Writes a run directory as the trainer would, advancing a clock, and keeps the expected
    buckets on the side (an independent tally, not the code under test)."""

    def __init__(self, root):
        self.run = RunDir(root)
        self.run.root.mkdir(parents=True, exist_ok=True)
        self.t = 0.0
        self.seen: set[int] = set()
        self.want = dict.fromkeys(gp.BUCKETS, 0.0)
        self.recomputed = 0
        # The loop's gap after a step belongs to the next step of the same process (a step
        # runs from the previous one's end), unless a save comes between them.
        self.pending_gap = 0.0

    def _metric(self, rec):
        with open(self.run.metrics, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _event(self, name, **fields):
        with open(self.run.events, "a") as f:
            f.write(json.dumps({"event": name, "time": self.t, **fields}) + "\n")

    def attempt(self, start, startup_s, restored_step, recomputed_so_far=0):
        self.t = start + startup_s
        self.want["startup"] += startup_s
        self.pending_gap = 0.0
        self._event("process_start", step=restored_step, steps_recomputed=recomputed_so_far)
        return self

    def steps(self, first, last, step_s, gap_s=0.1, eval_s=None, first_step=False):
        for step in range(first, last + 1):
            self.t += step_s
            again = step in self.seen
            self.seen.add(step)
            self.want["recomputed" if again else "productive"] += step_s + self.pending_gap
            self.want["other"] -= self.pending_gap
            self.recomputed += again
            rec = {"step": step, "time": self.t, "step_time_s": step_s, "loss": 1.0}
            if first_step and step == first:
                self._event("first_step", step=step)
            if eval_s and step == last:
                rec["eval_s"] = eval_s
                self.want["eval"] += eval_s
            self._metric(rec)
            self.t += (eval_s if eval_s and step == last else 0.0) + gap_s
            self.want["other"] += gap_s
            self.pending_gap = gap_s
        return self

    def save(self, step, blocking_s):
        self.t += blocking_s
        self.want["checkpoint"] += blocking_s
        self.pending_gap = 0.0
        self._event("checkpoint_save", step=step, blocking_s=blocking_s)
        return self

    def other(self, seconds):
        self.t += seconds
        self.want["other"] += seconds
        self.pending_gap += seconds
        return self


def sacct_row(start, elapsed, submit, state="REQUEUED", tres="billing=8,cpu=8,gres/gpu=4,mem=4000M,node=2"):
    iso = lambda t: datetime.fromtimestamp(t).isoformat(timespec="seconds")  # noqa: E731
    return {"JobID": "77", "State": state, "Submit": iso(submit), "Eligible": iso(submit), "Start": iso(start),
            "End": iso(start + elapsed), "ElapsedRaw": str(elapsed), "AllocTRES": tres, "NodeList": "node[1-2]"}


T0 = 1_800_000_000  # whole seconds, as sacct reports them


def _two_attempts(tmp_path):
    """Attempt 1: start-up, 10 steps with a save at 5 and an eval at 10, a save at 10, 3 more
    steps, a preemption signal mid-step 14, the signal's save, then idle until the end.
    Attempt 2 (after 150 s in the queue) restores step 10 (as after a node failure that lost
    11-14): steps 11-20 (11-14 recomputed), a final eval, exit."""
    tl = Timeline(tmp_path / "run")
    tl.attempt(T0, 20.0, 0).steps(1, 5, 2.0, first_step=True).save(5, 1.5).steps(6, 10, 2.0, eval_s=3.0)
    tl.save(10, 1.5).steps(11, 13, 2.0)
    signal_at = tl.t + 1.0  # mid-step 14
    tl.steps(14, 14, 2.0).save(14, 1.0)
    tl.committed = tl.t
    end1 = T0 + 100
    tl.t = signal_at  # the signal event carries the signal's time
    tl._event("signal", signal=12, step=14)
    # From the signal on, only the rest of step 14 (1 s) and the save (1 s) were work: the rest
    # is idle, step 14's trailing 0.1 s gap included.
    tl.want["idle_after_signal"] += end1 - signal_at - 2.0
    tl.want["other"] -= 0.1
    start2 = end1 + 150
    tl.attempt(start2, 12.0, 10, recomputed_so_far=4).steps(11, 20, 2.0, first_step=True)
    tl.t += 2.5
    tl.want["eval"] += 2.5
    tl._event("final_eval", step=20, eval_s=2.5)  # written at its end
    end2 = int(tl.t + 3.0) + 1
    tl.want["other"] += end2 - tl.t
    rows = [sacct_row(T0, 100, T0 - 30), sacct_row(start2, end2 - start2, end1, state="COMPLETED")]
    return tl, rows


def test_buckets_of_two_attempts_from_sacct_rows(tmp_path):
    tl, rows = _two_attempts(tmp_path)
    got = gp.summarize("sacct", gp.sacct_attempts(rows), gp.RunLog.read(tl.run))
    allocated = sum(float(r["ElapsedRaw"]) for r in rows)
    for key in gp.BUCKETS:
        assert got.buckets_s[key] == pytest.approx(tl.want[key], abs=1e-4), key
    assert sum(got.buckets_s.values()) == pytest.approx(allocated, rel=1e-9)
    assert got.steps_recomputed == tl.recomputed == 4 == gp.RunLog.read(tl.run).reported_recomputed
    assert got.unit == "GPU" and got.allocated_hours == pytest.approx(allocated * 4 / 3600)
    assert got.queue_wait_s == pytest.approx(30 + 150)
    assert got.goodput == pytest.approx(tl.want["productive"] / allocated)
    d = got.as_dict()
    assert set(d) == {"source", "unit", "allocated_hours", "queue_wait_s", "attempts", "goodput", "buckets_s",
                      "steps_recomputed", "world_sizes"}
    assert d["attempts"] == 2 and d["source"] == "sacct" and set(d["buckets_s"]) == set(gp.BUCKETS)
    # committed checkpoint (the signal's save of step 14) -> attempt 2's first step
    assert got.restart_gaps_s == [pytest.approx(T0 + 250 + 12.0 + 2.0 - tl.committed)]


def test_the_running_share_is_the_accounting_up_to_each_step(tmp_path):
    """The curve `hpcorch plot` draws: recomputed runs of a step add no point; each point is
    what the buckets would say of the job cut at that step's end; the last one differs from
    the job's figure only by what came after the last step."""
    tl, rows = _two_attempts(tmp_path)
    attempts, log = gp.sacct_attempts(rows), gp.RunLog.read(tl.run)
    from hpcorch.observe.plot import running_share

    points = running_share(attempts, log)
    assert [step for step, _ in points] == list(range(1, 21))  # 11-14 once, from attempt 1
    at_10 = dict(points)[10]
    end_10 = next(end for _, end, again, step in log.steps if step == 10 and not again)
    cut = [gp.Attempt(a.start, max(0.0, min(a.end, end_10) - a.start)) for a in attempts if a.start < end_10]
    assert at_10 == pytest.approx(gp.account(cut, gp.RunLog.read(tl.run))[0]["productive"] / (end_10 - T0))
    whole = gp.summarize("sacct", attempts, log)
    last_end = max(end for _, end, _, _ in log.steps)
    assert points[-1][1] == pytest.approx(whole.buckets_s["productive"] / (whole.allocated_s - (attempts[-1].end - last_end)))
    assert all(0 < share <= 1 for _, share in points)


def test_records_outside_the_attempts_are_not_counted(tmp_path):
    """A later job in the same run directory (another Slurm id) is not this job's time."""
    tl, rows = _two_attempts(tmp_path)
    got = gp.summarize("sacct", gp.sacct_attempts(rows[:1]), gp.RunLog.read(tl.run))
    assert got.steps_recomputed == 0 and got.buckets_s["eval"] == pytest.approx(3.0)
    assert sum(got.buckets_s.values()) == pytest.approx(100.0)
    assert got.buckets_s["other"] >= 0


def test_registry_fallback_without_accounting(tmp_path):
    tl, _ = _two_attempts(tmp_path)
    entry = Entry(key=1, job_id="77", name="x", profile="p", scheduler="slurm", run_dir=str(tl.run.root),
                  job_file="", slurm_conf="/nonexistent/slurm.conf", exclude=None, submitted=T0 - 30,
                  resumed_from=None)

    class NoAccounting:
        def attempts(self, ids):
            raise gp.SlurmError("Slurm accounting storage is disabled")

    got = gp.goodput(entry, slurm=NoAccounting())
    assert got.source == "registry" and len(got.attempts) == 2 and got.unit == "node"
    # windows run from each process start to its last record: start-up before Python is unseen
    assert got.attempts[0].start == T0 + 20.0 and got.buckets_s["startup"] == pytest.approx(0.0)
    assert got.buckets_s["productive"] == pytest.approx(tl.want["productive"])
    assert got.buckets_s["recomputed"] == pytest.approx(tl.want["recomputed"]) and got.steps_recomputed == 4
    assert sum(got.buckets_s.values()) == pytest.approx(got.allocated_s)
    assert min(got.buckets_s.values()) >= 0
    assert got.queue_wait_s == pytest.approx((T0 + 20 - (T0 - 30)) + (T0 + 262 - got.attempts[0].end))


def test_sacct_rows_typed_gres_pending_and_running():
    assert gp.tres_count("cpu=4,gres/gpu:emua=2,gres/gpu:emub=2,node=2", "gres/gpu") == 4
    assert gp.tres_count("cpu=4,gres/gpu=8,gres/gpu:emua=8,node=2", "gres/gpu") == 8
    assert gp.tres_count("cpu=4,node=2", "gres/gpu") == 0 and gp.tres_count("cpu=4,node=2", "node") == 2
    rows = [sacct_row(T0, 60, T0 - 5), sacct_row(T0 + 200, 0, T0 + 60)]
    rows[1].update(Start="Unknown", End="Unknown", State="PENDING")  # requeued, not started again
    attempts = gp.sacct_attempts(rows)
    assert len(attempts) == 1 and attempts[0].queue_wait_s == 5
    rows[1].update(Start=datetime.fromtimestamp(T0 + 200).isoformat(), End="Unknown", State="RUNNING")
    running = gp.sacct_attempts(rows, now=T0 + 230)
    assert running[1].elapsed_s == 30 and running[1].queue_wait_s == 200 - 60


def test_node_unit_without_gpus(tmp_path):
    tl, rows = _two_attempts(tmp_path)
    for r in rows:
        r["AllocTRES"] = "billing=4,cpu=4,mem=4000M,node=2"
    got = gp.summarize("sacct", gp.sacct_attempts(rows), gp.RunLog.read(tl.run))
    assert got.unit == "node" and got.allocated_hours == pytest.approx(got.allocated_s * 2 / 3600)


def test_keep_hold_switch_starts_no_helper(monkeypatch):
    from hpcorch.batch import recovery

    started = []
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: started.append(a))
    monkeypatch.setenv(recovery.HOLD_ENV, "keep")
    assert recovery.start_when_pending("123") is False and started == []
    monkeypatch.delenv(recovery.HOLD_ENV)
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert recovery.start_when_pending("123") is True and len(started) == 1
    assert started[0][0][-2:] == ["--start-when-pending", "123"]
    assert signal.getsignal(signal.SIGTERM) == before  # ignored only while the helper was started


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_real_run_records_what_goodput_needs(tmp_path):
    """One rank, tiny model: saves and evals are recorded, and the run directory alone
    accounts the run (buckets sum to the window, nothing negative, most of it named)."""
    from trainhelp import train

    out = train(tmp_path / "run", 1, "resources.nodes=1", "resources.tasks_per_node=1", "trainer.eval_interval=12")
    assert out.returncode == 0, out.stdout + out.stderr
    run = RunDir(tmp_path / "run")
    events = [json.loads(line) for line in run.events.read_text().splitlines()]
    saves = [e for e in events if e["event"] == "checkpoint_save"]
    assert [e["step"] for e in saves] == [6, 12, 18, 24] and all(e["blocking_s"] > 0 for e in saves)
    assert [e["event"] for e in events].count("final_eval") == 1
    evals = [m for m in map(json.loads, run.metrics.read_text().splitlines()) if "val_loss" in m]
    assert [m["step"] for m in evals] == [12, 24] and all(m["eval_s"] > 0 for m in evals)
    got = gp.goodput(run.root)
    assert got.source == "registry" and got.steps_recomputed == 0 and len(got.attempts) == 1
    assert sum(got.buckets_s.values()) == pytest.approx(got.allocated_s)
    assert min(got.buckets_s.values()) >= 0
    assert got.buckets_s["checkpoint"] == pytest.approx(sum(e["blocking_s"] for e in saves), abs=1e-4)
    assert got.buckets_s["productive"] > 0 and got.buckets_s["other"] < 0.5 * got.allocated_s


def test_ls_goodput_per_entry_without_a_cluster(tmp_path):
    """``hpcorch ls``'s figure: a local job's comes from its run directory, a remote job's is
    unknown here (its run directory is on the login node), a job that never ran has none."""
    tl, _ = _two_attempts(tmp_path)
    base = dict(name="x", profile="local", job_file="", slurm_conf=None, exclude=None, resumed_from=None)
    local = Entry(key=1, job_id="4242", scheduler="local", run_dir=str(tl.run.root), submitted=T0 - 30, **base)
    remote = Entry(key=2, job_id="77", scheduler="slurm", run_dir="/remote/run", submitted=T0, remote="{}", **base)
    empty = Entry(key=3, job_id="4343", scheduler="local", run_dir=str(tmp_path / "none"), submitted=T0, **base)
    got = gp.goodput_of([local, remote, empty])
    want = gp.goodput(local)
    assert got == {1: pytest.approx(want.goodput), 2: None, 3: None} and 0 < got[1] < 1


def test_an_ended_jobs_figure_is_kept_until_its_records_grow(tmp_path, monkeypatch):
    """``ls`` reads an ended job's records once: the figure is kept in the run directory, and
    taken again only when metrics or events changed (a resumed run appends to them)."""
    tl, _ = _two_attempts(tmp_path)
    base = dict(name="x", profile="local", job_file="", slurm_conf=None, exclude=None, resumed_from=None)
    done = Entry(key=1, job_id="4242", scheduler="local", run_dir=str(tl.run.root), submitted=T0 - 30, **base)
    first = gp.goodput_of([done], ended={1})
    assert tl.run.goodput_file.exists() and 0 < first[1] < 1
    reads = []
    real = gp.RunLog.read
    monkeypatch.setattr(gp.RunLog, "read", classmethod(lambda cls, run: reads.append(run) or real(run)))
    assert gp.goodput_of([done], ended={1}) == first and reads == []
    tl.other(5.0).steps(21, 22, 2.0)  # the records grew: computed again
    again = gp.goodput_of([done], ended={1})
    assert len(reads) == 1 and again[1] != first[1]
    assert gp.goodput_of([done]) == again and len(reads) == 2  # a running job is never cached


def test_steps_without_times_give_no_figure(tmp_path):
    """A run written before metrics carried their time: unknown, not 0 %."""
    run = RunDir(tmp_path / "old")
    run.root.mkdir()
    run.metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0, "step_time_s": 0.1}) + "\n" for s in (1, 2)))
    run.events.write_text(json.dumps({"event": "process_start", "time": T0, "step": 0, "restarts": 0}) + "\n")
    assert gp.goodput(run.root) is None


def test_hand_edited_records_skip_the_field_not_the_listing(tmp_path):
    """A string, a list, true, NaN or 1e999 where a number or a step belongs (a hand-edited or
    foreign record) costs that record, never ``status`` or ``ls``; a kept figure that is not a
    number is taken again."""
    tl, rows = _two_attempts(tmp_path)
    want = gp.summarize("sacct", gp.sacct_attempts(rows), gp.RunLog.read(tl.run)).as_dict()
    with open(tl.run.events, "a") as f:
        for bad in ({"event": "checkpoint_save", "time": T0 + 50, "blocking_s": "slow"},
                    {"event": "final_eval", "time": T0 + 60, "eval_s": [1]},
                    {"event": "process_start", "time": float("nan"), "steps_recomputed": 1e999},
                    {"event": "signal", "time": True}):
            f.write(json.dumps(bad) + "\n")
    with open(tl.run.metrics, "a") as f:
        for bad in ({"step": [3], "time": T0 + 1e6, "step_time_s": 1.0},
                    {"step": 3, "time": T0 + 1e6, "step_time_s": 1.0, "eval_s": "x"},
                    {"step": 4, "time": float("inf"), "step_time_s": 1.0}):
            f.write(json.dumps(bad) + "\n")
    got = gp.summarize("sacct", gp.sacct_attempts(rows), gp.RunLog.read(tl.run))
    assert got.buckets_s["checkpoint"] == pytest.approx(want["buckets_s"]["checkpoint"])
    assert sum(got.buckets_s.values()) == pytest.approx(got.allocated_s)
    # sacct's ElapsedRaw that is no count of seconds: that row is left out
    for raw in ("nan", "inf", "-5", "Unknown"):
        odd = [dict(rows[0], ElapsedRaw=raw), rows[1]]
        assert len(gp.sacct_attempts(odd)) == 1, raw
    base = dict(name="x", profile="local", job_file="", slurm_conf=None, exclude=None, resumed_from=None)
    done = Entry(key=1, job_id="4242", scheduler="local", run_dir=str(tl.run.root), submitted=T0 - 30, **base)
    first = gp.goodput_of([done], ended={1})
    kept = json.loads(tl.run.goodput_file.read_text())
    tl.run.goodput_file.write_text(json.dumps({**kept, "goodput": "abc"}))
    assert gp.goodput_of([done], ended={1}) == first and isinstance(first[1], float)


def test_each_attempt_carries_the_world_size_its_manifest_recorded(tmp_path):
    """A node range trains each attempt on what it got: the goodput table and status say so."""
    import json

    from hpcorch.cli.views import goodput_lines
    from hpcorch.observe.manifest import attempt_sizes, sizes_text
    from hpcorch.state.rundir import RunDir

    run = RunDir(tmp_path)
    run.manifests.mkdir(parents=True)
    for n, (t, world, nodes) in enumerate([(1005.0, 4, "node[1-4]"), (2003.0, 2, "node[1-2]")]):
        run.manifest_file(n).write_text(json.dumps({"time": t, "world_size": world, "node_count": world,
                                                    "nodes": nodes}))
    attempts = [gp.Attempt(1000.0, 500.0), gp.Attempt(2000.0, 100.0), gp.Attempt(3000.0, 10.0)]
    assert [a.world_size for a in gp.with_world_sizes(attempts, run)] == [4, 2, None]
    assert sizes_text(attempt_sizes(run)) == "attempt 0: 4 ranks on node[1-4]; attempt 1: 2 ranks on node[1-2]"
    g = gp.summarize("sacct", attempts, gp.RunLog()).as_dict()
    assert g["world_sizes"] == [4, 2, None]
    assert any("world size per attempt" in line and "4, 2, ?" in line for line in goodput_lines(g))
