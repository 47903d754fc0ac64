"""Fit a job to a cluster profile: every check a scheduler would do, before a queue slot is spent."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .spec import units
from .errors import PlanError
from .launchplan import LaunchPlan, extra_directives, resolve_launch
from .rundir import RunDir
from .spec.job import JobSpec
from .spec.profile import ClusterProfile, Partition

# Run directories reach #SBATCH --output, where sbatch does its own word splitting: keep them plain.
_PATH_RE = re.compile(r"^[A-Za-z0-9_./+@:,=-]+$")


@dataclass
class Plan:
    """Everything the sbatch template needs, resolved and checked."""

    job: JobSpec
    profile: ClusterProfile
    partition: Partition
    run_dir: Path
    account: str | None
    qos: str | None
    constraint: str | None
    time_minutes: int
    modules: list[str]
    environment: dict[str, str]
    python: str = sys.executable
    source: str = "job"
    profile_ref: str = ""  # the profile as the user named it (a name or a path), for resume
    notes: list[str] = field(default_factory=list)
    # Doubts that do not stop the job (the CLI prints each on stderr as "warning: ...").
    warnings: list[str] = field(default_factory=list)
    # [LAUNCH] how ranks start (wrapper words, srun options), extra #SBATCH options (profile ->
    # partition -> job), and folders prepended to PATH-like variables.
    launch: LaunchPlan = field(default_factory=lambda: LaunchPlan(python=sys.executable))
    extra_directives: list[str] = field(default_factory=list)
    prepend: dict[str, list[str]] = field(default_factory=dict)

    @property
    def time_limit(self) -> str:
        return units.format_time(self.time_minutes * 60)

    @property
    def run(self) -> RunDir:
        """The run directory's owner: every file name the script and the ranks use."""
        return RunDir.for_job(self.run_dir, self.job)

    @property
    def submitit_command(self) -> str:
        """The command submitit runs on each task (as its executor spells it)."""
        import shlex

        return f"{shlex.quote(self.python)} -u -m submitit.core._submit {shlex.quote(self.run.submitit_folder)}"

    @property
    def world_size(self) -> int:
        return self.job.resources.world_size


def default_run_dir(job: JobSpec, profile: ClusterProfile | None = None) -> Path:
    """``RUN_ROOT/JOB_NAME`` with the profile's ``defaults.run_root`` (``~`` and ``$VARS``
    expanded here), else ``runs/JOB_NAME`` below the current folder."""
    root = profile.defaults.run_root if profile is not None else None
    if root is None:
        return Path("runs") / job.name
    if "USER" not in os.environ:  # cron, containers and `sudo -i` may not set it
        import getpass

        root = root.replace("${USER}", getpass.getuser()).replace("$USER", getpass.getuser())
    expanded = os.path.expanduser(os.path.expandvars(root))
    if "$" in expanded:
        raise PlanError(f"profile {profile.name!r}", "defaults.run_root",
                        f"{root!r} names an unset environment variable; set it or pass --run-dir")
    return Path(expanded) / job.name


def make_plan(job: JobSpec, profile: ClusterProfile, run_dir: str | Path | None = None,
              source: str = "job", python: str | None = None) -> Plan:
    """Check that ``job`` fits ``profile`` and resolve defaults; raise PlanError if not.

    ``source`` names the job file in error messages.
    """
    res = job.resources

    def fail(key: str, message: str) -> PlanError:
        return PlanError(source, key, message)

    try:
        part = profile.partition(res.partition)
    except KeyError:
        raise fail("resources.partition", f"expected one of profile {profile.name!r}'s partitions "
                   f"({', '.join(p.name for p in profile.partitions)}), got {res.partition!r}") from None
    ntype = profile.node_types[part.node_type]
    excluded = set(res.exclude_hosts)  # a set: 16k hosts x 1k exclusions stays linear
    usable = [h for h in part.hosts if h not in excluded]
    if res.nodes > len(usable):
        raise fail("resources.nodes", f"asks for {res.nodes} nodes, but partition {part.name!r} has "
                   f"{len(usable)}{' after exclusions' if res.exclude_hosts else ''}")
    if res.gpus_per_node > ntype.gpus.count:
        raise fail("resources.gpus_per_node", f"asks for {res.gpus_per_node} GPUs per node, but "
                   f"partition {part.name!r} nodes ({part.node_type}) have {ntype.gpus.count}")
    cpus = res.tasks_per_node * res.cpus_per_task
    if cpus > ntype.cpus:
        raise fail("resources.cpus_per_task", f"asks for {res.tasks_per_node} tasks x "
                   f"{res.cpus_per_task} CPUs = {cpus} CPUs per node, but {part.node_type} nodes have {ntype.cpus}")
    if res.mem_mb is not None and res.mem_mb > ntype.memory_mb:
        raise fail("resources.mem", f"asks for {res.mem_mb} MB per node, but {part.node_type} "
                   f"nodes have {ntype.memory_mb} MB")
    if part.max_time_s is not None and res.time_s > part.max_time_s:
        raise fail("resources.time", f"asks for {units.format_time(res.time_s)}, but partition "
                   f"{part.name!r} allows at most {units.format_time(part.max_time_s)}")

    constraint = res.constraint or profile.defaults.constraint
    _check_constraint(constraint, profile, part, from_profile=not res.constraint, fail=fail)

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(job, profile)
    run_dir = run_dir.expanduser().absolute()
    if not _PATH_RE.fullmatch(str(run_dir)):
        raise PlanError("--run-dir", "", f"expected a path of letters, digits and _./+@:,=- "
                        f"(it reaches #SBATCH lines), got {str(run_dir)!r}")

    environment = {k: str(v) for k, v in profile.environment.variables.items()}
    environment.update({k: str(v) for k, v in job.environment.items()})
    warnings: list[str] = []
    launch = resolve_launch(job, profile, part, python, fail, warnings)
    plan = Plan(
        job=job, profile=profile, partition=part, run_dir=run_dir,
        account=res.account or profile.defaults.account,
        qos=res.qos or profile.defaults.qos,
        constraint=constraint,
        time_minutes=units.minutes_ceil(res.time_s),
        modules=list(profile.environment.modules),
        environment=environment, source=source,
        python=launch.python, launch=launch, warnings=warnings,
        extra_directives=extra_directives(job, profile, part),
        prepend={k: list(v) for k, v in profile.environment.prepend.items()},
    )
    plan.warnings += _unknown_exclusions(res.exclude_hosts, profile)
    if job.trainer.checkpoint.interval > job.trainer.steps:
        plan.notes.append("checkpoint.interval exceeds steps: only the final checkpoint is written")
    return plan


# Slurm's --constraint: feature names joined by & (and), | (or), "," (and, older syntax), with
# [ ] for matching-or and ( ) for grouping; name*N asks N nodes with that feature.
_CONSTRAINT_SPLIT = re.compile(r"[&|,\[\]()]")


def constraint_features(constraint: str) -> list[str]:
    """The feature names in a Slurm constraint, in order, once each (counts and operators dropped)."""
    names = (token.split("*", 1)[0].strip() for token in _CONSTRAINT_SPLIT.split(constraint))
    return list(dict.fromkeys(name for name in names if name))


def _check_constraint(constraint: str | None, profile: ClusterProfile, part: Partition, *,
                      from_profile: bool, fail) -> None:
    """Refuse a constraint naming a feature no node of the partition has: Slurm would refuse it
    at submit time ("Invalid feature specification"), after the queue wait for a slot in sbatch."""
    if not constraint or profile.scheduler == "local":  # the local executor has no features to match
        return
    have = profile.node_types[part.node_type].features
    unknown = [f for f in constraint_features(constraint) if f not in have]
    if unknown:
        origin = f" (from profile {profile.name!r}'s defaults.constraint)" if from_profile else ""
        raise fail("resources.constraint",
                   f"{constraint!r}{origin} names feature{'s' if len(unknown) > 1 else ''} "
                   f"{', '.join(unknown)} that no node of partition {part.name!r} ({part.node_type}) has; "
                   f"its features: {', '.join(have) if have else 'none'}")


def _unknown_exclusions(hosts: list[str], profile: ClusterProfile) -> list[str]:
    """A warning for excluded hosts the profile does not list: the profile may describe only part
    of the cluster, so they are passed on to Slurm rather than refused. Kept on the plan, not
    logged: the CLI prints plan.warnings, and its logging setup would print a logged one twice."""
    unknown = [h for h in hosts if not profile.has_host(h)]
    if not unknown:
        return []
    message = (f"resources.exclude names {len(unknown)} host{'s' if len(unknown) > 1 else ''} not in "
               f"profile {profile.name!r}: {units.brief_hosts(unknown)} (passed to Slurm as they are)")
    return [message]


def summarize(plan: Plan) -> dict:
    """What the plan will use: resources, batch arithmetic, model size (raw numbers; the CLI
    adds separators and units, see :mod:`hpcorch.display`)."""
    job, res, tr = plan.job, plan.job.resources, plan.job.trainer
    model = tr.model
    gpu = plan.profile.node_types[plan.partition.node_type].gpus
    tokens_per_step = tr.global_batch * tr.model.seq_len
    summary = {
        "job": job.name,
        "profile": plan.profile.name,
        "partition": plan.partition.name,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "world_size": plan.world_size,
        "gpus": f"{res.nodes * res.gpus_per_node} x {gpu.model}" if res.gpus_per_node else "none (CPU)",
        "time_limit": plan.time_limit,
        "account": plan.account or "-",
        "qos": plan.qos or "-",
        "parameters": model.num_params(),
        "flops_per_token": round(model.flops_per_token()),
        "tokens_per_step": tokens_per_step,
        "grad_accumulation": job.grad_accum,
        "total_tokens": tokens_per_step * tr.steps,
        "sharding": tr.sharding,
        "checkpoint_every": f"{tr.checkpoint.interval} steps, keep {tr.checkpoint.keep}",
        "requeue": (f"on, {job.requeue.signal} {job.requeue.signal_lead_s}s before the limit"
                    if job.requeue.enabled else "off"),
        "run_dir": str(plan.run_dir),
    }
    if plan.launch.wrapper != "none":  # [LAUNCH] what starts the ranks, when it is not plain python
        summary["launch"] = f"{plan.launch.wrapper} wrapper, {plan.python}"
    if gpu.peak_tflops and res.gpus_per_node:
        summary["peak_pflops"] = round(gpu.peak_tflops * res.nodes * res.gpus_per_node / 1000, 2)
    for i, note in enumerate(plan.notes):
        summary[f"note{i + 1}"] = note
    return summary
