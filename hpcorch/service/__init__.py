"""hpcorch's service API: the functions the ``hpcorch`` command is a thin layer over, and the
ones to call from Python.

    from hpcorch import service

    plan = service.plan("jobs/gpt2-124m.yaml", "h100-ndr", overrides=["trainer.steps=50"])
    print(service.render(plan))            # the exact sbatch script
    print(service.check(plan))             # sbatch --test-only on the live cluster
    sub = service.submit(plan)             # the job, recorded in the registry
                                           # (allow_config_change=True: over a checkpoint's config)
    service.status(sub.entry.key)          # state, progress, what to do next
    service.resume(sub.entry.key)          # after it ended without completing
    service.export(sub.entry.key, "model.safetensors")  # the weights, for use outside hpcorch

A job is named by its registry number, Slurm job id, name (the newest) or run directory.
What a job's scheduler kind decides (Slurm, submitit's local controller, ``hpcorch train``'s
processes, a login node over SSH) is its backend's (:mod:`hpcorch.submit.backend`), chosen once
here by :func:`backend_for`; no function below branches on the kind.
Nothing here imports torch or submitit until a job is really submitted or trained.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from hpcorch.errors import ConfigError, HpcorchError, PlanError
from hpcorch.plan.plan import Plan, default_run_dir, make_plan
from hpcorch.service.export import EXPORT_FORMATS, export  # noqa: F401 - part of the API
from hpcorch.spec.compat import check_config_change, training_config
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.state import jobstate
from hpcorch.state.registry import Entry, Registry
from hpcorch.state.rundir import LEASE_ENV, Lease, RunDir
from hpcorch.submit.backend import Backend, Resume, Submission
from hpcorch.submit.local import LocalBackend
from hpcorch.submit.process import ProcessBackend
from hpcorch.submit.slurm import SlurmBackend
from hpcorch.util.fileio import json_lines

_BACKENDS: dict[str, type[Backend]] = {b.kind: b for b in (SlurmBackend, LocalBackend, ProcessBackend)}


# ----- the backend of a job: chosen here, once ---------------------------------------------------
def backend_of(scheduler: str) -> Backend:
    """The backend of a scheduler kind (a profile's ``scheduler``, a registry entry's)."""
    try:
        return _BACKENDS[scheduler]()
    except KeyError:
        raise HpcorchError(f"unknown scheduler {scheduler!r}; expected one of {sorted(_BACKENDS)}") from None


def backend_for(entry: Entry) -> Backend:
    """The backend that answers for a registered job: its login node's when it was submitted
    over SSH, else its scheduler's."""
    if entry.remote:
        from hpcorch.remote.backend import RemoteBackend

        return RemoteBackend()
    return backend_of(entry.scheduler)


def _by_backend(entries: list[Entry]) -> list[tuple[Backend, list[Entry]]]:
    """``entries`` grouped by backend kind (each group asked once), in the order first seen."""
    groups: dict[str, tuple[Backend, list[Entry]]] = {}
    for e in entries:
        backend = backend_for(e)
        groups.setdefault(backend.kind, (backend, []))[1].append(e)
    return list(groups.values())


# ----- spec -> plan -> script -------------------------------------------------------------------
def plan(job: str | os.PathLike, profile: str | os.PathLike | None = None, overrides: Iterable[str] = (),
         run_dir: str | os.PathLike | None = None, nccl_debug: str | None = None,
         registry: Registry | None = None, force: bool = False, code_root: str | os.PathLike | None = None) -> Plan:
    """Load ``job`` (a path or a job name) and ``profile`` (a name or a path; default
    ``$HPCORCH_PROFILE`` or ``local``), apply ``overrides`` (``KEY=VALUE``), check the fit.
    ``nccl_debug``: NCCL_DEBUG's level for this submission only (INFO, WARN, ...). On Slurm,
    the nodes the registry holds in quarantine for the profile are excluded. A GPU job whose
    memory estimate exceeds its GPUs is refused unless ``force`` (:mod:`hpcorch.plan.verdict`).
    ``code_root``: the folder a ``program:`` job's relative code folder resolves in (``--code``)."""
    from hpcorch.plan.verdict import check_fit
    from hpcorch.spec.catalog import default_profile, lasting
    from hpcorch.state.quarantine import excluded_nodes

    profile = str(profile) if profile is not None else default_profile()
    try:
        spec = load_job(job, list(overrides))
    except ConfigError as exc:
        # The batch arithmetic (trainer.*) failed: what the site refuses of the resources
        # comes first, then that error, in one list.
        if exc.key.startswith("trainer."):
            _site_refusals_first(job, overrides, profile, exc)
        raise
    cluster = load_profile(profile)
    held = excluded_nodes(cluster.name, registry) if backend_of(cluster.scheduler).has_nodes else {}
    result = make_plan(spec, cluster, run_dir=run_dir, source=str(job), quarantined=held, nccl_debug=nccl_debug,
                       code_root=None if code_root is None else str(code_root))
    result.profile_ref = lasting(profile)  # recorded: status, resume from any folder
    if spec.program is None:  # a program's memory is its own: nothing to estimate
        check_fit(result, force)  # a GPU job that cannot fit is refused (force: a warning)
    return result


def _site_refusals_first(job, overrides, profile: str, error: ConfigError) -> None:
    """Raise the resources' plan errors followed by ``error`` (a batch-arithmetic error of the
    job), if the resources alone are refused; else return (also when the profile is bad:
    the job's own error is then the one to report)."""
    from hpcorch.errors import PlanError, PlanErrors
    from hpcorch.spec.job import resources_only

    alone = resources_only(job, list(overrides))
    try:
        cluster = load_profile(profile)
    except ConfigError:
        return
    if alone is None:
        return
    try:
        make_plan(alone, cluster, run_dir="/", source=error.source)
    except PlanErrors as found:
        raise PlanErrors([*found.errors, error]) from None
    except PlanError as found:
        raise PlanErrors([found, error]) from None


def render(plan: Plan, template_dir: str | os.PathLike | None = None) -> str:
    """The sbatch script ``plan`` submits, byte for byte."""
    from hpcorch.render.sbatch import render_sbatch

    return render_sbatch(plan, template_dir)


def check(plan: Plan, script: str | None = None) -> str:
    """Ask the live cluster whether it would accept the script (``sbatch --test-only``), then
    whether hpcorch of a compatible version imports where the ranks run (inside the image);
    returns both answers, one line each, and raises with the first refusal."""
    from hpcorch import __version__
    from hpcorch.submit.imagecheck import check_image

    backend = backend_of(plan.profile.scheduler)
    answer = backend.check(plan.profile.name, script if script is not None else render(plan))
    return "\n".join(filter(None, [answer, check_image(plan, dict(os.environ), __version__)]))


# ----- submit, resume ---------------------------------------------------------------------------
def submit(plan: Plan, script: str | None = None, registry: Registry | None = None,
           resumed_from: int | None = None, allow_config_change: bool = False,
           template_dir: str | os.PathLike | None = None, name: str | None = None) -> Submission:
    """Submit ``plan`` (with ``script``, else rendered from ``template_dir`` or the shipped
    templates), take the run directory's lease for the new job, and record it in the registry
    (with ``template_dir``, which ``resume`` renders with again). A run directory whose checkpoint was
    trained under another config is refused before anything is submitted, unless
    ``allow_config_change`` (see :func:`accept_config_changes`). ``name``: the registry's name for
    it (a sweep point's ``SWEEP/POINT``; default the job's name)."""
    from hpcorch.submit.executor import SubmitError

    script = script if script is not None else render(plan, template_dir)
    run = plan.run
    backend = backend_of(plan.profile.scheduler)
    scheduler = backend.kind
    run.check_location()
    fresh = not run.root.exists()
    try:
        with run.lease_lock():  # a concurrent submit into the same directory waits, then sees our job
            # A live job in the directory first: its checkpoints are still moving, so a config
            # comparison against them would be premature (and "in use" is what the user must hear).
            run.ensure_free(Lease(scheduler, ""), jobstate.lease_is_live)
            accept_config_changes(run, plan.job, allow_config_change)
            job = backend.submit(plan, script)
            holder = Lease.for_holder(scheduler, str(job.job_id), slurm_conf=os.environ.get("SLURM_CONF"))
            run.take(holder)
    except SubmitError:
        if fresh:  # a rejected submission leaves nothing behind (an existing run directory stays)
            import shutil

            shutil.rmtree(run.root, ignore_errors=True)
        raise
    entry = (registry or Registry()).add(
        job.job_id, name or plan.job.name, plan.profile_ref or plan.profile.name, scheduler,
        str(run.root), str(run.job_file), slurm_conf=os.environ.get("SLURM_CONF"),
        exclude=plan.job.resources.exclude, resumed_from=resumed_from, started=holder.started or None,
        template_dir=str(Path(template_dir).absolute()) if template_dir else None)
    return Submission(entry, job)


def submit_remote(plan: Plan, code_dir: str | os.PathLike | None = None, run_dir: str | None = None,
                  template_dir: str | os.PathLike | None = None, allow_config_change: bool = False,
                  nccl_debug: str | None = None, accept_new: bool = False, check: bool = False,
                  force: bool = False, registry: Registry | None = None) -> Submission | str:
    """Submit ``plan`` (validated here) on its profile's login node over SSH (see
    :mod:`hpcorch.remote.ops`) and record it here as remote; ``code_dir`` is synced there
    first. ``run_dir``: a path on the login node. ``check``: ask that cluster whether it would
    take the job (``sbatch --test-only``) and return its answer; nothing is submitted.
    ``force``: the login node submits a job estimated not to fit too (as ``submit --force``)."""
    from hpcorch.remote import ops

    entry = ops.submit(plan, plan.profile_ref or plan.profile.name, code_dir=code_dir, run_dir=run_dir,
                       template_dir=template_dir, allow_config_change=allow_config_change,
                       nccl_debug=nccl_debug, accept_new=accept_new, check=check, force=force,
                       registry=registry)
    return entry if check else Submission(entry, None)


def resume(ref: str, exclude: str | None = None, registry: Registry | None = None,
           allow_config_change: bool = False, template_dir: str | os.PathLike | None = None) -> Submission:
    """Submit job ``ref`` again into its run directory (the ranks resume from the latest
    committed checkpoint), excluding nodes that failed under it. Refused while the job is
    pending, running or requeued, and for a completed job: there is nothing to resume.
    ``allow_config_change``: as for :func:`submit` (its job file was edited since). The script
    is rendered from ``template_dir``, else the template folder the job was submitted with."""
    from hpcorch.spec.units import expand_hostlist

    try:  # the user's input first, before any scheduler is asked
        asked = set(expand_hostlist(exclude)) if exclude else set()
    except ValueError as exc:
        raise ConfigError("--exclude", "", str(exc)) from None
    registry = registry or Registry()
    entry = registry.get(ref)

    def resubmit(overrides: list[str]) -> Submission:
        again = plan(entry.job_file, entry.profile, overrides, run_dir=entry.run_dir, registry=registry)
        return submit(again, registry=registry, resumed_from=entry.key, allow_config_change=allow_config_change,
                      template_dir=template_dir or entry.template_dir)

    return backend_for(entry).resume(entry, Resume(exclude, asked, allow_config_change, registry, resubmit))


def accept_config_changes(run: RunDir, job, allow: bool = False, step: int | None = None) -> list[str]:
    """Compare ``job``'s training config with the one recorded with the run directory's latest
    committed checkpoint (or ``step``), reading only JSON (no torch, no rank started, nothing
    submitted). Raises :class:`hpcorch.spec.compat.ConfigChanged` for a change the user did not
    accept (``allow``), or one no flag allows. Accepted differences are recorded in the run
    directory, which is how the flag reaches every rank and every requeued attempt (they read
    the run directory, not our command line); call it holding the directory's lease. The
    ranks check again when they load (they may fall back to an older checkpoint)."""
    found = run.recorded_config(step)
    if found is None:  # nothing to continue, or a checkpoint from before configs were recorded
        return []
    step, recorded = found
    config = training_config(job)
    changes = check_config_change(recorded, config, f"the checkpoint at step {step} in "
                                  f"{run.checkpoints}", allow, run.accepted_config())
    if changes:
        run.accept_config(config, changes)
    return changes


def failed_nodes(entry: Entry) -> list[str]:
    """Nodes that ran the job (any of its runs, requeues included) and that its scheduler now
    reports down, drained or failing: a node that failed and was brought back is not excluded."""
    return backend_for(entry).failed_nodes(entry)


# ----- observe and operate ----------------------------------------------------------------------
def jobs(registry: Registry | None = None) -> list[dict]:
    """Every registered job with its state and goodput (0..1 or None): batched squeue/sacct
    calls per cluster; a remote job's, its login node's ``ls`` (one call per login node)."""
    from hpcorch.observe import status as observe
    from hpcorch.service.sweepremote import adopt_pending, recorded

    registry = registry or Registry()
    adopt_pending(registry)  # the points of sweeps submitted from here to a login node
    entries = registry.all()
    found: dict[int, dict] = {}
    for backend, group in _by_backend(entries):
        found.update(backend.rows(group))
    sweeps: dict[str, bool] = {}  # a point's run directory sits in its sweep's folder (sweep.json)

    def sweep_of(e: Entry) -> str | None:
        if "/" not in e.name:
            return None
        prefix, parent = e.name.split("/", 1)[0], str(Path(e.run_dir).parent)
        if parent not in sweeps:  # a sweep of this machine, or one submitted from here to its login node
            try:
                remote = (recorded(prefix) or {}).get("root") == parent
            except HpcorchError:  # a damaged record: its own commands say so; `ls` lists the rest
                remote = False
            sweeps[parent] = (Path(parent) / "sweep.json").is_file() or remote
        return prefix if sweeps[parent] else None

    return [{"key": e.key, "job_id": e.job_id, "name": e.name, "profile": e.profile, "state": found[e.key]["state"],
             "run_dir": e.run_dir, "host": found[e.key].get("host"), **observe.row(e),
             "goodput": found[e.key]["goodput"], "sweep": sweep_of(e)}
            for e in entries]


def status(ref: str, registry: Registry | None = None) -> dict:
    """State, restarts, latest checkpoint, last loss, tokens/s, what to do next, and where the
    allocated time went (``goodput``, see :mod:`hpcorch.observe.goodput`)."""
    entry = (registry or Registry()).get(ref)
    return backend_for(entry).status(entry)


def cancel(ref: str, registry: Registry | None = None) -> str:
    """Cancel job ``ref``: its ranks checkpoint on SIGTERM and the job ends. Returns what was done."""
    entry = (registry or Registry()).get(ref)
    return backend_for(entry).cancel(entry)


def logs(ref: str, write: Callable[[str], None], rank: int = 0, stream: str = "out", follow: bool = False,
         show_submitit: bool = False, registry: Registry | None = None) -> None:
    """Pass rank ``rank``'s log of job ``ref`` to ``write``; with ``follow`` until the job ends."""
    entry = (registry or Registry()).get(ref)
    backend_for(entry).logs(entry, write, rank=rank, stream=stream, follow=follow, show_submitit=show_submitit)


def wait(entry: Entry, write: Callable[[str], None], show_submitit: bool = False) -> str:
    """Follow rank 0's log until the job ends; returns its final state."""
    return backend_for(entry).wait(entry, write, show_submitit)


# ----- train here ------------------------------------------------------------------------------
def train(job: str | os.PathLike, nproc: int | None = None, overrides: Iterable[str] = (),
          run_dir: str | os.PathLike | None = None, resume_step: int | None = None,
          peak_tflops: float | None = None, allow_config_change: bool = False) -> tuple[int, Path]:
    """Train ``job`` in ``nproc`` processes on this machine (``hpcorch train``); returns the exit
    code (``protocol.CHECKPOINTED`` after a signal: run it again to resume) and the run dir.
    ``allow_config_change``: continue a checkpoint trained under another config (see
    :func:`accept_config_changes`; refused before any rank starts otherwise)."""
    from hpcorch.train.spawn import fork_ranks, launch_local

    fork_ranks()  # a bad HPCORCH_FORK_RANKS is refused before the run dir is claimed
    overrides = list(overrides)
    if nproc is not None:
        overrides += ["resources.nodes=1", f"resources.tasks_per_node={nproc}"]
    try:
        spec = load_job(job, overrides)
    except ConfigError as exc:
        # --nproc is the world size here: a layout or batch that does not fit it names it.
        if nproc is None or "(--set " in exc.source or not exc.key.startswith("trainer."):
            raise
        raise ConfigError(f"{exc.source} (--nproc {nproc})", exc.key, exc.message) from None
    from hpcorch.spec.job import check_available

    if spec.program is None:
        check_available(spec.trainer.loggers, str(job))
    else:
        from hpcorch.plan.program import check_program, code_dir

        check_program(spec, False, lambda key, message: PlanError(str(job), key, message), [])
        spec.program.code_dir = code_dir(spec.program)
    if spec.resources.nodes != 1:
        raise ConfigError(str(job), "resources.nodes",
                          f"a local run uses one node, got {spec.resources.nodes}; pass --nproc")
    run = RunDir.for_job(run_dir if run_dir else default_run_dir(spec), spec)
    run.check_location()
    kind = ProcessBackend.kind
    lease = Lease.for_holder(kind, str(os.getpid()))
    with run.lease_lock():
        run.claim(lease, jobstate.lease_is_live)  # "in use" first, as in submit
        accept_config_changes(run, spec, allow_config_change, resume_step)
    job_file = run.write_job(spec)
    from hpcorch.batch.manifest import write_attempt  # git: not on a dry run's path

    write_attempt(run, str(os.getpid()), kind, code_dir=os.getcwd())
    extra = (["--resume-step", str(resume_step)] if resume_step is not None else []) + \
        (["--peak-tflops", str(peak_tflops)] if peak_tflops else [])
    env = {LEASE_ENV: lease.token()}
    if spec.program is not None:
        return _train_program(spec, run, job_file, env), run.root
    code = launch_local(job_file, run.root, spec.resources.tasks_per_node, extra, env=env)
    return code, run.root


def _train_program(spec, run: RunDir, job_file: Path, env: dict) -> int:
    """``hpcorch train`` of a ``program:`` job: its own program in N local processes, with the
    environment it gets on the cluster (a signal: it stops, and the user runs it again)."""
    import time

    from hpcorch.batch.program import restart_cause
    from hpcorch.runtime.env import Rendezvous, hpcorch_env, program_argv, torchrun_env
    from hpcorch.train.spawn import launch_local

    program = spec.program
    if program.launcher == "torchrun":
        raise ConfigError(str(job_file), "program.launcher", "expected direct for hpcorch train, which starts "
                                                             "the processes itself (--set program.launcher=direct)")
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    attempt = sum(1 for e in json_lines(run.events) if e.get("event") == "process_start")
    env.update(hpcorch_env(str(run.root), str(run.checkpoints), attempt, restart_cause(run, attempt),
                           None, program.signal, str(os.getpid()), program.steps, time.time()))
    run.append_event("process_start", durable=True, time=time.time(), step=run.progress().get("step", 0),
                     attempt=attempt, program=program.describe)
    argv = program_argv(program, env={**os.environ, **env})

    def rank_env(rank: int, nproc: int, port: int) -> dict:  # as a single-node torchrun sets them
        return torchrun_env(Rendezvous(rank, rank, nproc, nproc, 0, 1, "127.0.0.1", port), str(os.getpid()))

    code = launch_local(job_file, run.root, spec.resources.tasks_per_node, env=env, argv=argv, cwd=program.code_dir,
                        rank_env=rank_env)
    if code == 0:
        from hpcorch.batch.program import write_summary

        write_summary(run, program.describe, time.time())
    return code


def pull(ref: str, into: str | os.PathLike | None = None, registry: Registry | None = None):
    """Fetch remote job ``ref``'s metrics, summary, events and logs (incrementally) so that
    ``status`` works offline; returns (folder, what moved)."""
    entry = (registry or Registry()).get(ref)
    return backend_for(entry).pull(entry, into)
