"""Sweeps: many runs of one job as Slurm job arrays, operated as one.

    sp = plan_sweep("gpt-tiny", "devcluster", SweepAxes(grid=["trainer.seed=1,2,3"]), max_parallel=2)
    print(render_sweep(sp))            # the array script(s) and the point table
    sw = submit_sweep(sp)              # one sbatch per resource shape (and per MaxArraySize)
    sweepops.sweep_status(sw.name)     # one row per point; resume_sweep / cancel_sweep (sweepops)

Each point is a whole hpcorch job: its own run directory ``SWEEP/POINT`` (its script, job file,
lease, restart budgets, pre-flight, goodput, manifests) and its own registry entry, whose job id
is its array task's ``A_i`` (so ``hpcorch status/logs/cancel SWEEP/POINT`` work as for any job,
and a requeue acts on that task alone). Points whose ``#SBATCH`` lines agree share an array.

``SWEEP/sweep.json`` records the definition, the points' run directories and the arrays, so the
table is rebuilt from the files alone; ``SWEEP/array/`` holds the task list and each point's
completion marker (:class:`hpcorch.state.arraytasks.ArrayTasks`).
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hpcorch.errors import ConfigError, HpcorchError
from hpcorch.plan.plan import Plan, default_run_dir
from hpcorch.spec.sweep import Point, SweepAxes, check_point, expand, varying_keys  # noqa: F401 (SweepAxes: the CLI's)
from hpcorch.state import jobstate
from hpcorch.state.arraytasks import ArrayTasks
from hpcorch.state.registry import Registry
from hpcorch.state.rundir import Lease
from hpcorch.util.fileio import atomic_write, read_json

SWEEP_FILE = "sweep.json"
# Lines of a point's header that are its own, not the resources its array shares.
_OWN_LINES = ("--job-name=", "--output=", "--error=", "--open-mode=")


@dataclass
class PointPlan:
    point: Point
    plan: Plan
    script: str            # the point's own sbatch script (run by its array task)

    @property
    def shape(self) -> tuple[str, ...]:
        """The point's ``#SBATCH`` options that its array must share (all tasks of an array get
        the same size and time limit)."""
        return tuple(line.removeprefix("#SBATCH ") for line in self.script.splitlines()
                     if line.startswith("#SBATCH ") and not line.removeprefix("#SBATCH ").startswith(_OWN_LINES))


@dataclass
class SweepPlan:
    name: str
    root: Path
    job: str
    profile: str
    axes: SweepAxes
    overrides: list[str]
    max_parallel: int | None
    points: list[PointPlan]
    template_dir: str | None = None

    def shapes(self) -> list[list[PointPlan]]:
        """The points grouped by resource shape, in the order first seen."""
        groups: dict[tuple[str, ...], list[PointPlan]] = {}
        for pp in self.points:
            groups.setdefault(pp.shape, []).append(pp)
        return list(groups.values())

    @property
    def scheduler(self) -> str:
        return self.points[0].plan.profile.scheduler


@dataclass
class Sweep:
    """A submitted sweep, as ``sweep.json`` records it."""

    root: Path
    record: dict = field(default_factory=dict)

    @classmethod
    def open(cls, root: Path) -> Sweep:
        record = read_json(Path(root) / SWEEP_FILE)
        if not record.get("points"):
            raise HpcorchError(f"{Path(root) / SWEEP_FILE}: no sweep recorded there")
        return cls(Path(root), record)

    name = property(lambda self: self.record["name"])
    tasks = property(lambda self: ArrayTasks(self.root / "array"))

    def save(self) -> None:
        atomic_write(self.root / SWEEP_FILE, json.dumps(self.record, indent=1, sort_keys=True) + "\n")


# ----- plan, render -------------------------------------------------------------------------------
def plan_sweep(job: str, profile: str | None, axes: SweepAxes, name: str | None = None,
               max_parallel: int | None = None, overrides: list[str] = (), root: str | None = None,
               registry: Registry | None = None, template_dir: str | None = None,
               force: bool = False, code_root: str | None = None) -> SweepPlan:
    """Expand ``axes`` into points and plan each as a job (``--set``-style checks: a bad value is
    one line naming its point and key, before anything is submitted). ``code_root``: where a
    ``program:`` job's relative code folder resolves (``--code``, synced to a login node)."""
    from hpcorch import service
    from hpcorch.render.sbatch import render_sbatch
    from hpcorch.spec.catalog import default_profile
    from hpcorch.spec.job import load_job
    from hpcorch.spec.profile import load_profile
    from hpcorch.spec.schema import Invalid, check_name

    if max_parallel is not None and max_parallel < 1:
        raise ConfigError("--max-parallel", str(max_parallel), "expected a whole number of at least 1")
    points = expand(axes)
    base = load_job(job, list(overrides))
    profile = str(profile) if profile is not None else default_profile()
    name = name or f"{base.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        check_name("--name", name, "a sweep name")
    except Invalid as exc:
        raise ConfigError("--name", "", exc.message) from None
    sweep_root = Path(root) if root else default_run_dir(base, load_profile(profile)).parent / name
    registry = registry or Registry()
    planned = []
    for point in points:
        try:
            plan = service.plan(job, profile, [*overrides, *point.overrides()], run_dir=sweep_root / point.name,
                                registry=registry, force=force, code_root=code_root)
        except ConfigError as exc:
            raise check_point(point, exc) from None
        planned.append(PointPlan(point, plan, render_sbatch(plan, template_dir, array_task=True)))
    return SweepPlan(name, sweep_root.absolute(), str(job), profile, axes, list(overrides), max_parallel,
                     planned, template_dir)


def array_script(sp: SweepPlan, shape: tuple[str, ...], batch) -> str:
    """The script of one array of ``sp`` (``batch``: its :class:`hpcorch.submit.array.ArrayBatch`)."""
    from hpcorch import __version__
    from hpcorch.render.sbatch import render_template

    return render_template("hpcorch/sweep.sh.j2", sp.template_dir, name=sp.name, shape=list(shape), array=batch,
                           root=str(sp.root), logs=str(sp.root / "logs"), version=__version__)


def check_sweep(scripts: list[str]) -> list[str]:
    """``sbatch --test-only`` of each array script (without its hold): Slurm's answers."""
    from hpcorch.cluster.slurm import Slurm

    return [Slurm().test_only(script.replace("#SBATCH --hold\n", "")) for script in scripts]


def point_table(sp: SweepPlan) -> list[dict]:
    """One row per point: its number, name, the values that vary, its resource shape's number."""
    keys = varying_keys([pp.point for pp in sp.points])
    shape_of = {pp.shape: n for n, group in enumerate(sp.shapes()) for pp in group[:1]}
    return [{"point": pp.point.index, "name": pp.point.name, "array": shape_of[pp.shape],
             **{k: pp.point.params.get(k, "") for k in keys}} for pp in sp.points]


def render_sweep(sp: SweepPlan, max_array_size: int = 1001) -> list[str]:
    """The array scripts a submission would send (run lists shown as ``ARRAY/runs/NNNN.txt``, not
    written), one per resource shape and per ``max_array_size`` points."""
    from hpcorch.submit.array import ArrayBatch, chunks

    scripts = []
    for group in sp.shapes():
        for offset, count in chunks(len(group), max_array_size):
            batch = ArrayBatch(sp.root / "array", sp.root / "array" / "runs" / "NNNN.txt", offset, count,
                               sp.max_parallel)
            scripts.append(array_script(sp, group[0].shape, batch))
    return scripts


# ----- submit, resume, cancel -----------------------------------------------------------------------
def submit_sweep(sp: SweepPlan, registry: Registry | None = None) -> Sweep:
    """Submit every point: one held array per resource shape (split above ``MaxArraySize``), each
    point's lease and registry entry written, then the arrays released."""
    from hpcorch.cluster.slurm import Slurm

    if sp.scheduler not in ("slurm", "local"):
        raise HpcorchError(f"profile {sp.profile!r} runs {sp.scheduler} jobs; a sweep runs as Slurm job arrays "
                           "or on this machine (profile local)")
    if (sp.root / SWEEP_FILE).exists():
        raise HpcorchError(f"{sp.root} already holds a sweep; `hpcorch sweep resume {sp.name}`, or choose --name")
    sp.root.mkdir(parents=True, exist_ok=True)
    tasks = ArrayTasks(sp.root / "array").create([pp.point.name for pp in sp.points])
    sweep = Sweep(sp.root, {
        "name": sp.name, "job": sp.job, "profile": sp.profile, "axes": sp.axes.to_dict(),
        "overrides": sp.overrides, "max_parallel": sp.max_parallel, "created": time.time(),
        "template_dir": sp.template_dir, "keys": varying_keys([pp.point for pp in sp.points]),
        "points": [{"index": pp.point.index, "name": pp.point.name, "params": pp.point.params,
                    "run_dir": str(pp.plan.run.root), "shape": list(pp.shape)} for pp in sp.points],
        "arrays": []})
    if sp.scheduler == "local":
        start_local_points(sweep, tasks, [pp.point.name for pp in sp.points])
    else:
        submit_points(sweep, tasks, sp.points, Slurm(), registry or Registry())
    return sweep


def start_local_points(sweep: Sweep, tasks: ArrayTasks, names: list[str]) -> None:
    """The local profile: a background runner starts ``hpcorch sweep run-point`` for the points,
    K at a time (1 without --max-parallel); each submits its point as any local job and waits."""
    import sys

    from hpcorch.submit.array import plan_arrays, start_local

    k = sweep.record["max_parallel"] or 1
    batches = plan_arrays(tasks, names, k, max_array_size=len(names))
    (sweep.root / "logs").mkdir(exist_ok=True)
    pid = start_local(batches, [sys.executable, "-m", "hpcorch", "sweep", "run-point", str(sweep.root)],
                      sweep.root / "logs", k)
    sweep.record["arrays"].append({"id": f"local:{pid}", "run_list": str(batches[0].run_list), "offset": 0,
                                   "tasks": names, "submitted": time.time()})
    sweep.save()


def run_point(root: str, registry: Registry | None = None) -> int:
    """One point of a local sweep, in the runner's task (``HPCORCH_ARRAY_TASK`` names it): submit
    it as a local job under the name ``SWEEP/POINT`` and wait for it; 0 when it completed."""
    from hpcorch import service
    from hpcorch.state.arraytasks import current_task

    sweep = Sweep.open(Path(root))
    name = current_task()
    point = next(p for p in sweep.record["points"] if p["name"] == name)
    registry = registry or Registry()
    pp = plan_point(sweep.record, point, registry)
    sub = service.submit(pp.plan, registry=registry, name=f"{sweep.name}/{name}",
                         template_dir=sweep.record.get("template_dir"))
    state = service.wait(sub.entry, lambda text: None)
    return 0 if jobstate.base_state(state) == "COMPLETED" else 1


def plan_point(rec: dict, point: dict, registry: Registry) -> PointPlan:
    """Plan a recorded point again (resume, a local runner's task)."""
    from hpcorch import service
    from hpcorch.render.sbatch import render_sbatch

    p = Point(point["index"], point["params"], point["name"])
    plan = service.plan(rec["job"], rec["profile"], [*rec["overrides"], *p.overrides()], run_dir=point["run_dir"],
                        registry=registry)
    return PointPlan(p, plan, render_sbatch(plan, rec.get("template_dir"), array_task=True))


def submit_points(sweep: Sweep, tasks: ArrayTasks, points: list[PointPlan], slurm, registry: Registry,
                   resumed: dict[str, int] | None = None) -> list[str]:
    """Prepare each point's run directory, sbatch one held array per shape, record the leases and
    registry entries under each point's ``A_i``, then release the arrays. Returns the array ids."""
    import submitit  # noqa: F401 - imported once here, not by the first threads at once

    from hpcorch.service import accept_config_changes
    from hpcorch.submit.array import plan_arrays
    from hpcorch.submit.executor import prepare_array_task

    def prepare(pp: PointPlan) -> None:
        run = pp.plan.run
        run.check_location()
        with run.lease_lock():
            run.ensure_free(Lease("slurm", ""), jobstate.lease_is_live)
            accept_config_changes(run, pp.plan.job)  # a point's checkpoint trained under another config: refused
        prepare_array_task(pp.plan, pp.script)

    # Each point's files are written durably (fsync): in parallel, a sweep waits on the disk once.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(prepare, points))
    (sweep.root / "logs").mkdir(exist_ok=True)
    groups: dict[tuple[str, ...], list[PointPlan]] = {}
    for pp in points:
        groups.setdefault(pp.shape, []).append(pp)
    max_size = slurm.max_array_size()
    conf = os.environ.get("SLURM_CONF")
    ids = []
    sp_like = _ScriptContext(sweep)
    for shape, group in groups.items():
        by_name = {pp.point.name: pp for pp in group}
        for batch in plan_arrays(tasks, list(by_name), sweep.record["max_parallel"], max_size):
            array_id = slurm.sbatch(array_script(sp_like, shape, batch))
            ids.append(array_id)
            for index, task_name in enumerate(batch.task_ids()):
                pp, job_id = by_name[task_name], f"{array_id}_{index}"
                run = pp.plan.run
                with run.lease_lock():
                    run.take(Lease.for_holder("slurm", job_id, slurm_conf=conf))
                registry.add(job_id, f"{sweep.name}/{task_name}", sweep.record["profile"], "slurm", str(run.root),
                             str(run.job_file), slurm_conf=conf, exclude=pp.plan.job.resources.exclude,
                             resumed_from=(resumed or {}).get(task_name))
            sweep.record["arrays"].append({"id": array_id, "run_list": str(batch.run_list), "offset": batch.offset,
                                           "tasks": batch.task_ids(), "submitted": time.time()})
            sweep.save()
    for array_id in ids:
        slurm.release(array_id)
    return ids


@dataclass
class _ScriptContext:
    """What :func:`array_script` reads of a plan, from a recorded sweep (resume re-renders)."""

    sweep: Sweep

    name = property(lambda self: self.sweep.name)
    root = property(lambda self: self.sweep.root)
    template_dir = property(lambda self: self.sweep.record.get("template_dir"))


def find_sweep(ref: str, registry: Registry | None = None) -> Sweep:
    """A sweep by its folder or its name (the newest registry entry named ``NAME/POINT``)."""
    if (Path(ref) / SWEEP_FILE).is_file():
        return Sweep.open(Path(ref))
    for entry in reversed((registry or Registry()).all()):
        if entry.name.startswith(f"{ref}/") and (Path(entry.run_dir).parent / SWEEP_FILE).is_file():
            return Sweep.open(Path(entry.run_dir).parent)
    raise HpcorchError(f"no sweep named {ref!r} (give its name or its folder, which holds {SWEEP_FILE})")


def point_entries(sweep: Sweep, registry: Registry) -> dict[str, object]:
    """Each point's newest registry entry, by point name."""
    latest = {}
    prefix = f"{sweep.name}/"
    for entry in registry.all():
        if entry.name.startswith(prefix) and Path(entry.run_dir).parent == sweep.root:
            latest[entry.name.removeprefix(prefix)] = entry
    return latest
