"""Operate a submitted sweep as a whole: ``hpcorch sweep status`` (one row per point),
``cancel``, ``resume`` (only the points that did not complete) and ``hpcorch plot`` of a sweep
(its points' curves overlaid). See :mod:`hpcorch.service.sweep` for the layout."""
from __future__ import annotations

from hpcorch.errors import HpcorchError
from hpcorch.service.sweep import Sweep, find_sweep, plan_point, point_entries, start_local_points, submit_points
from hpcorch.state import jobstate
from hpcorch.state.registry import Registry
from hpcorch.state.rundir import RunDir

# ----- operate the sweep as a whole -----------------------------------------------------------------
STATUS_COLUMNS = ("point", "name", "state", "restarts", "step", "final_loss", "val_loss", "tokens_per_s", "goodput")


def sweep_status(ref: str, registry: Registry | None = None, sort: str | None = None) -> dict:
    """One row per point: its parameters (the keys that vary), its job's state (one scheduler
    call per backend), restarts, step, final loss and validation loss (``summary.json``),
    tokens/s (the last step's) and goodput. ``sort``: a column (``-col``: descending)."""
    from hpcorch.service import _by_backend

    registry = registry or Registry()
    sweep = find_sweep(ref, registry)
    entries = point_entries(sweep, registry)
    found: dict[int, dict] = {}
    for backend, group in _by_backend(list(entries.values())):
        found.update(backend.rows(group))
    done = sweep.tasks.done() if sweep.tasks.tasks_file.exists() else set()
    keys = sweep.record.get("keys") or []
    rows = []
    for point in sweep.record["points"]:
        run = RunDir(point["run_dir"])
        entry = entries.get(point["name"])
        summary, progress = run.summary(), run.progress()
        live = found.get(entry.key) if entry else None
        rows.append({"point": point["index"], "name": point["name"],
                     **{k: point["params"].get(k) for k in keys},
                     "state": live["state"] if live else "NOT SUBMITTED", "job_id": entry.job_id if entry else None,
                     "done": point["name"] in done,
                     "restarts": run.restart_count(), "step": summary.get("final_step", progress.get("step")),
                     "final_loss": summary.get("final_loss"), "val_loss": summary.get("val_loss"),
                     "tokens_per_s": run.last_metrics().get("tokens_per_s"),
                     "goodput": live["goodput"] if live else None, "run_dir": point["run_dir"]})
    if sort:
        column = sort.lstrip("-")
        if rows and column not in rows[0]:
            raise HpcorchError(f"--sort {sort!r}: expected one of {', '.join(rows[0])}")
        present = [r for r in rows if r[column] is not None]
        present.sort(key=lambda r: r[column], reverse=sort.startswith("-"))
        rows = present + [r for r in rows if r[column] is None]
    return {"name": sweep.name, "root": str(sweep.root), "keys": keys, "rows": rows}


def cancel_sweep(ref: str, points: list[str] = (), registry: Registry | None = None) -> list[str]:
    """Cancel the sweep's live points (``points``: only those, by number or name); what was done."""
    from hpcorch import service

    registry = registry or Registry()
    sweep = find_sweep(ref, registry)
    done = [] if points else _stop_local_runners(sweep)
    entries = point_entries(sweep, registry)  # after the runners stopped: no point starts behind our back
    chosen = _choose(sweep, points)
    return done + [f"{name}: {service.backend_for(entries[name]).cancel(entries[name])}"
                   for name in chosen if name in entries]


def _stop_local_runners(sweep: Sweep) -> list[str]:
    """SIGTERM a local sweep's runner (it starts no more points); only a process that is one."""
    import signal

    import psutil

    said = []
    for array in sweep.record["arrays"]:
        if not array["id"].startswith("local:"):
            continue
        pid = int(array["id"].split(":", 1)[1])
        try:
            proc = psutil.Process(pid)
            if "hpcorch.submit.array" in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGTERM)
                said.append(f"runner {pid}: stopped (no more points start)")
        except psutil.Error:
            continue
    return said


def _choose(sweep: Sweep, points: list[str]) -> list[str]:
    names = [p["name"] for p in sweep.record["points"]]
    if not points:
        return names
    chosen = []
    for ref in points:
        match = [n for n in names if n == ref or (ref.isdigit() and n.split("-", 1)[0].lstrip("0") == ref.lstrip("0"))]
        if not match:
            raise HpcorchError(f"sweep {sweep.name} has no point {ref!r} (points: {names[0]} .. {names[-1]})")
        chosen += match
    return chosen


def resume_sweep(ref: str, registry: Registry | None = None) -> tuple[Sweep, list[str], list[str]]:
    """Submit again only the points that did not complete (no marker) and are not live; returns
    (sweep, the points submitted, the live points left alone). None to submit: nothing is."""
    from hpcorch import service
    from hpcorch.cluster.slurm import Slurm

    registry = registry or Registry()
    sweep = find_sweep(ref, registry)
    entries = point_entries(sweep, registry)
    tasks = sweep.tasks
    remaining = tasks.remaining()
    states = {}
    for backend, group in service._by_backend([entries[n] for n in remaining if n in entries]):
        states.update(backend.states(group))
    live = [n for n in remaining if n in entries and not jobstate.has_ended(states[entries[n].key])]
    todo = [n for n in remaining if n not in live]
    if not todo:
        return sweep, [], live
    by_name = {p["name"]: p for p in sweep.record["points"]}
    if any(a["id"].startswith("local:") for a in sweep.record["arrays"]):
        start_local_points(sweep, tasks, todo)
        return sweep, todo, live
    planned = [plan_point(sweep.record, by_name[name], registry) for name in todo]
    resumed = {n: entries[n].key for n in todo if n in entries}
    submit_points(sweep, tasks, planned, Slurm(), registry, resumed)
    return sweep, todo, live


def is_sweep(ref: str, registry: Registry | None = None) -> bool:
    """Whether ``ref`` names a sweep (its folder, or its name) rather than one job."""
    try:
        find_sweep(ref, registry)
    except HpcorchError:
        return False
    return True


def sweep_curves(ref: str, registry: Registry | None = None):
    """Every point's curves (those with metrics yet), labelled by the parameters that differ."""
    from hpcorch.observe.plot import Overlay, curves

    sweep = find_sweep(ref, registry)
    keys = sweep.record.get("keys") or []
    runs = []
    for point in sweep.record["points"]:
        run = RunDir(point["run_dir"])
        if not run.metrics.is_file():
            continue
        label = " ".join(f"{k.rsplit('.', 1)[-1]}={point['params'].get(k)}" for k in keys) or point["name"]
        runs.append((label, curves(run, point["name"])))
    if not runs:
        raise HpcorchError(f"sweep {sweep.name}: no point has metrics yet; nothing to plot")
    return Overlay(sweep.name, runs)
