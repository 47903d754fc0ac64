"""Where a job's allocated time went: goodput accounting across every attempt of a job.

An *attempt* is one run of the job on its allocation: Slurm's accounting has one record per
run of a requeued job (``sacct -D``; the job keeps its id). Within each attempt's window
[Start, Start + ElapsedRaw] the run directory's records say what the time was spent on:

- ``productive``: steps trained for the first time (metrics.jsonl: a step ends at ``time``;
  it began where the previous step of its process ended, less any evaluation or save
  between them, or ``step_time_s`` before its end for a process's first step);
- ``recomputed``: steps trained again after a restart (a step number seen before in the run);
- ``checkpoint``: time training was blocked by saves (``checkpoint_save`` / ``checkpoint_wait``
  events, ``blocking_s``);
- ``eval``: evaluation (``eval_s`` of eval steps, the ``final_eval`` event);
- ``startup``: allocation start to the attempt's first step (launch, pre-flight, imports,
  data, model build, restore);
- ``idle_after_signal``: from a stop signal to the attempt's end, less the step, save and
  evaluation still done in it (the tail the scheduler kept the nodes for);
- ``other``: what is left (the tail after the last step, exit, teardown).

``other`` is the remainder, so the buckets sum to the allocated time; that the named buckets
never overlap (every record is clipped to its attempt) is what keeps ``other`` >= 0. Queue
wait is kept apart (not allocated): first submit to first start, and each earlier attempt's
end to the next start (the requeue's ``BeginTime`` hold included). Allocated hours are
``ElapsedRaw x gres/gpu`` summed over attempts (``x node`` for a job without GPUs: the unit
says which). Without accounting (no slurmdbd, a local run) the attempts come from the run
directory's ``process_start`` events instead: the source says which, and such windows miss
the launch before Python started.

Nothing here imports torch: ``hpcorch status`` and ``hpcorch ls`` call it.
"""
from __future__ import annotations

import bisect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hpcorch.cluster.slurm import Slurm, SlurmError
from hpcorch.cluster.slurmtext import tres_counts
from hpcorch.state.registry import Entry
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import atomic_write, json_lines, number, read_json

# A backend's accounting: each job's runs as :meth:`Slurm.attempts` rows, by job id, asked in one
# go for many entries (a job it has nothing on may be missing: then asked alone).
Accounting = Callable[[list[Entry]], dict[str, list[dict[str, str]]]]

BUCKETS = ("productive", "startup", "recomputed", "checkpoint", "eval", "idle_after_signal", "other")
SAVE_EVENTS = ("checkpoint_save", "checkpoint_wait")


@dataclass
class Attempt:
    """One run of a job on its allocation (epoch seconds)."""

    start: float
    elapsed_s: float
    ready: float | None = None  # since when it waited in the queue (None: unknown)
    gpus: int = 0               # GPUs of the whole allocation
    nodes: int = 1
    world_size: int | None = None  # the ranks it trained on (its manifest's; a node range varies it)

    @property
    def end(self) -> float:
        return self.start + self.elapsed_s

    @property
    def queue_wait_s(self) -> float:
        return max(0.0, self.start - self.ready) if self.ready is not None else 0.0


@dataclass
class RunLog:
    """What a run directory's metrics and events say about time, as intervals (epoch s)."""

    steps: list[tuple[float, float, bool, int]] = field(default_factory=list)  # (start, end, recomputed, step)
    evals: list[tuple[float, float]] = field(default_factory=list)
    saves: list[tuple[float, float]] = field(default_factory=list)
    signals: list[float] = field(default_factory=list)
    process_starts: list[float] = field(default_factory=list)
    first_steps: list[float] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)  # a checkpoint committed (saves end, signal stops)
    last_time: float | None = None
    reported_recomputed: int = 0  # the trainer's own count, from the last process_start
    unplaced: int = 0  # step records without a time (older runs)

    @classmethod
    def read(cls, run: RunDir) -> RunLog:
        log = cls()
        for ev in json_lines(run.events):
            log._event(ev)
        records = []
        for rec in json_lines(run.metrics):
            end, dt = number(rec.get("time")), number(rec.get("step_time_s"))
            if end is None or dt is None:
                log.unplaced += 1  # written before records carried their time: cannot be placed
                continue
            step = rec.get("step")
            records.append({"time": end, "step_time_s": dt, "step": step if isinstance(step, int) else None})
            eval_s = number(rec.get("eval_s")) or 0.0
            if eval_s:  # evaluation runs after the step's time
                log.evals.append((end, end + eval_s))
            log._saw(end + eval_s)
        log._place_steps(records)
        return log

    def _place_steps(self, records: list[dict]) -> None:
        """A step takes from the end of the one before it in the same process (as Google's
        goodput counts a step: start to the next start; the loop's own work between steps
        is training) less any evaluation or save between them, which have buckets of their
        own; the first step of a process takes its measured time."""
        starts = sorted(self.process_starts)
        blockers = sorted(end for _, end in self.evals + self.saves)
        seen: set[int] = set()
        prev_end: float | None = None
        for rec in records:
            end, step = rec["time"], rec.get("step")
            measured = end - rec["step_time_s"]
            start = measured
            if prev_end is not None and prev_end <= measured and not _any_between(starts, prev_end, end):
                start = max(prev_end, _last_before(blockers, measured) or prev_end)
                start = min(start, measured)
            self.steps.append((start, end, step in seen, step))
            seen.add(step)
            prev_end = end

    def _event(self, ev: dict) -> None:
        name, t = ev.get("event"), number(ev.get("time"))
        if t is None:
            return
        if name in SAVE_EVENTS:
            self.saves.append((t - (number(ev.get("blocking_s")) or 0.0), t))
            if name == "checkpoint_save":
                self.commits.append(t)
        elif name == "final_eval":
            self.evals.append((t - (number(ev.get("eval_s")) or 0.0), t))
        elif name == "signal":
            self.signals.append(t)
        elif name == "checkpoint_committed":
            self.commits.append(t)
        elif name == "process_start":
            self.process_starts.append(t)
            self.reported_recomputed = int(number(ev.get("steps_recomputed")) or 0)
        elif name == "first_step":
            self.first_steps.append(t)
        if name != "signal":  # a signal's time is when it came, not when it was written
            self._saw(t)

    def _saw(self, t: float) -> None:
        self.last_time = t if self.last_time is None else max(self.last_time, t)


@dataclass
class Goodput:
    """A job's allocated time, where it went, and the queue wait apart from it."""

    source: str                 # "sacct" or "registry" (the run directory's own records)
    unit: str                   # "GPU" or "node": what allocated hours count
    attempts: list[Attempt]
    buckets_s: dict[str, float]
    steps_recomputed: int
    restart_gaps_s: list[float] = field(default_factory=list)  # committed checkpoint -> next first step

    @property
    def allocated_s(self) -> float:
        return sum(a.elapsed_s for a in self.attempts)

    @property
    def allocated_hours(self) -> float:
        per = (lambda a: a.gpus) if self.unit == "GPU" else (lambda a: a.nodes)
        return sum(a.elapsed_s * per(a) for a in self.attempts) / 3600

    @property
    def queue_wait_s(self) -> float:
        return sum(a.queue_wait_s for a in self.attempts)

    @property
    def goodput(self) -> float:
        total = self.allocated_s
        return self.buckets_s["productive"] / total if total > 0 else 0.0

    def as_dict(self) -> dict:
        """The shape ``hpcorch status`` shows (raw numbers; seconds and hours)."""
        return {"source": self.source, "unit": self.unit, "allocated_hours": self.allocated_hours,
                "queue_wait_s": self.queue_wait_s, "attempts": len(self.attempts), "goodput": self.goodput,
                "buckets_s": dict(self.buckets_s), "steps_recomputed": self.steps_recomputed,
                "world_sizes": [a.world_size for a in self.attempts]}


# ----- the arithmetic ---------------------------------------------------------------------------
def _any_between(sorted_times: list[float], lo: float, hi: float) -> bool:
    i = bisect.bisect_right(sorted_times, lo)
    return i < len(sorted_times) and sorted_times[i] < hi


def _last_before(sorted_times: list[float], t: float) -> float | None:
    i = bisect.bisect_right(sorted_times, t)
    return sorted_times[i - 1] if i else None


def overlap(start: float, end: float, lo: float, hi: float) -> float:
    """Seconds of [start, end] inside [lo, hi]."""
    return max(0.0, min(end, hi) - max(start, lo))


def account(attempts: list[Attempt], log: RunLog) -> tuple[dict[str, float], int]:
    """The buckets (seconds) of ``attempts`` from ``log``'s records, and the number of
    recomputed steps inside them."""
    b = dict.fromkeys(BUCKETS, 0.0)
    recomputed = 0
    log.steps.sort(key=lambda s: s[1])
    ends = [s[1] for s in log.steps]
    for a in attempts:
        lo, hi = a.start, a.end
        # Steps are in time order: only those ending in the window, and one straddling its end.
        first, last = bisect.bisect_left(ends, lo), bisect.bisect_right(ends, hi)
        steps = [s for s in log.steps[first:last + 1] if overlap(s[0], s[1], lo, hi) > 0 or lo <= s[1] <= hi]
        recomputed += sum(1 for s in steps if s[2])
        busy: list[tuple[float, float]] = []
        for start, end, again, _ in steps:
            b["recomputed" if again else "productive"] += overlap(start, end, lo, hi)
            busy.append((start, end))
        for key, spans in (("eval", log.evals), ("checkpoint", log.saves)):
            for start, end in spans:
                inside = overlap(start, end, lo, hi)
                if inside > 0:
                    b[key] += inside
                    busy.append((start, end))
        signal = next((t for t in log.signals if lo <= t <= hi), None)
        first = min((s for s, _ in busy), default=hi)
        startup_end = min(first, signal if signal is not None else hi, hi)
        b["startup"] += max(0.0, startup_end - lo)
        if signal is not None:
            done_after = sum(overlap(s, e, max(signal, startup_end), hi) for s, e in busy)
            b["idle_after_signal"] += max(0.0, hi - max(signal, startup_end) - done_after)
    named = sum(v for k, v in b.items() if k != "other")
    b["other"] = sum(a.elapsed_s for a in attempts) - named
    return b, recomputed


def restart_gaps(attempts: list[Attempt], log: RunLog) -> list[float]:
    """For each attempt after the first: seconds from the last committed checkpoint before it
    to its first step (the stop, the queue, the hold and the start-up together)."""
    gaps = []
    for a in attempts[1:]:
        before = [t for t in log.commits if t < a.start]
        first = next((t for t in sorted(log.first_steps) if a.start <= t <= a.end), None)
        if before and first is not None:
            gaps.append(first - max(before))
    return gaps


def summarize(source: str, attempts: list[Attempt], log: RunLog) -> Goodput:
    buckets, recomputed = account(attempts, log)
    unit = "GPU" if any(a.gpus for a in attempts) else "node"
    return Goodput(source, unit, attempts, buckets, recomputed, restart_gaps(attempts, log))


# ----- attempts: from accounting, or from the run directory ---------------------------------------
def _epoch(text: str) -> float | None:
    """sacct's local ``2026-11-24T09:51:46`` (``Unknown`` / ``None`` for not yet)."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def tres_count(tres: str, name: str) -> int:
    """``gres/gpu`` (or ``node``) of an AllocTRES text: the untyped total, else the typed ones summed."""
    fields = tres_counts(tres)
    if name in fields:
        return fields[name]
    return sum(v for k, v in fields.items() if k.startswith(name + ":"))


def sacct_attempts(rows: list[dict[str, str]], now: float | None = None) -> list[Attempt]:
    """Attempts from :meth:`Slurm.attempts` rows of one job; runs that never started are left
    out (their wait still counts towards the next start)."""
    now = time.time() if now is None else now
    attempts: list[Attempt] = []
    ready = _epoch(rows[0].get("Submit") or "") if rows else None
    for row in rows:
        start = _epoch(row.get("Start") or "")
        if start is None:
            continue
        end = _epoch(row.get("End") or "")
        raw = str(row.get("ElapsedRaw") or 0).strip()
        if end is not None and not raw.isdecimal():  # "Unknown", "nan", "-5": left out, not the listing
            continue
        elapsed = float(raw) if end is not None else max(0.0, now - start)
        tres = row.get("AllocTRES") or ""
        attempts.append(Attempt(start, elapsed, ready, tres_count(tres, "gres/gpu"), tres_count(tres, "node") or 1))
        ready = start + elapsed
    return attempts


def run_attempts(run: RunDir, log: RunLog, submitted: float | None = None, now: float | None = None,
                 running: bool = False) -> list[Attempt]:
    """Attempts from the run directory alone: one per ``process_start`` (after ``submitted``),
    each ending at the last record written before the next one (at ``now`` while ``running``)."""
    starts = sorted(t for t in log.process_starts if submitted is None or t >= submitted - 1)
    gpus, nodes = _job_size(run)
    times = sorted([s[1] for s in log.steps] + [e for _, e in log.evals + log.saves] + log.commits
                   + log.first_steps)
    attempts: list[Attempt] = []
    ready = submitted
    for i, start in enumerate(starts):
        nxt = starts[i + 1] if i + 1 < len(starts) else float("inf")
        inside = [t for t in times if start <= t < nxt]
        end = max(inside, default=start)
        if running and nxt == float("inf"):
            end = time.time() if now is None else now
        attempts.append(Attempt(start, end - start, ready, gpus * nodes, nodes))
        ready = end
    return attempts


def _job_size(run: RunDir) -> tuple[int, int]:
    """(GPUs per node, nodes) from the run's resolved job; (0, 1) if unreadable."""
    from hpcorch.errors import HpcorchError
    from hpcorch.spec.job import load_job

    try:
        res = load_job(run.job_file).resources
        return int(res.gpus_per_node or 0), int(res.nodes)
    except (HpcorchError, OSError, ValueError):
        return 0, 1


# ----- entry points -------------------------------------------------------------------------------
def measure(ref: Entry | RunDir | str | Path, slurm: Slurm | None = None,
            rows: list[dict[str, str]] | None = None, running: bool = False) -> tuple[Goodput, RunLog] | None:
    """The goodput of a registry entry (a Slurm job: its accounting, else its run directory),
    or of a run directory alone, with the records it was accounted from. ``rows``: the job's
    :meth:`Slurm.attempts` rows, when the caller fetched many jobs' at once. None when
    nothing ran yet."""
    entry = ref if isinstance(ref, Entry) else None
    run = RunDir.open(entry.run_dir) if entry else (ref if isinstance(ref, RunDir) else RunDir.open(ref))
    log = RunLog.read(run)
    if log.unplaced and not log.steps:
        return None  # steps written before they carried their time: no honest figure
    if entry is not None and entry.scheduler == "slurm":
        if rows is None:
            try:
                rows = (slurm or Slurm(env=entry.env)).attempts([entry.job_id]).get(entry.job_id, [])
            except SlurmError:
                rows = []
        attempts = sacct_attempts(rows)
        if attempts:
            return summarize("sacct", with_world_sizes(attempts, run), log), log
    attempts = run_attempts(run, log, entry.submitted if entry else None, running=running)
    return (summarize("registry", with_world_sizes(attempts, run), log), log) if attempts else None


def with_world_sizes(attempts: list[Attempt], run: RunDir, slack_s: float = 5.0) -> list[Attempt]:
    """Each attempt's world size from the manifest written as it started (within it)."""
    from hpcorch.observe.manifest import attempt_sizes

    sizes = [s for s in attempt_sizes(run) if isinstance(s.get("time"), (int, float))]
    for a in attempts:
        found = next((s for s in sizes if a.start - slack_s <= s["time"] <= a.end + slack_s), None)
        if found is not None:
            a.world_size = found.get("world_size")
    return attempts


def goodput(ref: Entry | RunDir | str | Path, slurm: Slurm | None = None,
            rows: list[dict[str, str]] | None = None, running: bool = False) -> Goodput | None:
    """:func:`measure`'s figure alone."""
    found = measure(ref, slurm, rows, running)
    return found[0] if found else None


def goodput_dict(entry: Entry, running: bool = False) -> dict | None:
    """``service.status``'s ``goodput``: :meth:`Goodput.as_dict`, None before anything ran."""
    found = goodput(entry, running=running)
    return found.as_dict() if found else None


def goodput_of(entries: list[Entry], ended: set[int] = frozenset(),
               accounting: Accounting | None = None) -> dict[int, float | None]:
    """Each entry's goodput (0..1, None when unknown), for ``hpcorch ls``: ``accounting`` (the
    job's backend's: one sacct call per cluster) asked once for the jobs still needing it, then
    each run directory's records. A job in ``ended`` (registry keys) keeps its figure in
    ``goodput.json``, valid while its metrics and events stay the size they were: ``ls`` reads
    a long run's records once, not every time."""
    cached = {e.key: _cached(e) for e in entries if e.key in ended and not e.remote}
    asked = [e for e in entries if not e.remote and cached.get(e.key) is None]
    rows = accounting(asked) if accounting is not None and asked else None
    out: dict[int, float | None] = {}
    for e in entries:
        if e.remote:
            out[e.key] = None  # its run directory is on the login node
            continue
        if cached.get(e.key) is not None:
            out[e.key] = cached[e.key]["goodput"]
            continue
        try:
            found = goodput(e, rows=rows.get(e.job_id) if rows is not None else None)
        except OSError:
            found = None
        out[e.key] = found.goodput if found and found.allocated_s > 0 else None
        if e.key in ended:
            _keep(e, out[e.key])
    return out


def _sizes(run: RunDir) -> list[int]:
    return [path.stat().st_size if path.exists() else -1 for path in (run.metrics, run.events)]


def _cached(entry: Entry) -> dict | None:
    run = RunDir(entry.run_dir)
    found = read_json(run.goodput_file)
    try:
        valid = found.get("job_id") == entry.job_id and found.get("sizes") == _sizes(run)
    except OSError:
        return None
    kept = found.get("goodput", "missing")  # None: unknown; not a number (hand-edited): taken again
    return found if valid and (kept is None or number(kept) is not None) else None


def _keep(entry: Entry, value: float | None) -> None:
    run = RunDir(entry.run_dir)
    try:
        atomic_write(run.goodput_file, json.dumps({"job_id": entry.job_id, "sizes": _sizes(run), "goodput": value}),
                     durable=False)
    except OSError:
        pass  # a run directory this user may not write: computed again next time
