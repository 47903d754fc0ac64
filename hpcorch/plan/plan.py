"""Fit a job to a cluster profile: every check a scheduler would do, before a queue slot is spent."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpcorch.errors import HpcorchError, PlanError
from hpcorch.plan import fabric, nodestep, siterequests
from hpcorch.plan import layout as layoutplan
from hpcorch.plan.launch import LaunchPlan, extra_directives, resolve_launch
from hpcorch.plan.nodefit import (
    check_constraint,
    check_gpu_type,
    check_mig,
    check_node_counts,
    check_ranks_per_gpu,
    fit_node_groups,
)
from hpcorch.plan.placement import PlacementPlan, plan_placement
from hpcorch.plan.problems import Problems
from hpcorch.spec import units
from hpcorch.spec.job import JobSpec
from hpcorch.spec.noderange import largest_valid
from hpcorch.spec.placement import NCCL_DEBUG_LEVELS, debugging_in
from hpcorch.spec.profile import ClusterProfile, NodeGroup, Partition
from hpcorch.state.rundir import RunDir
from hpcorch.train.models import spec_of

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
    # The header's resource options as the site wants them asked (profile `requests`), each a
    # whole option checked for an #SBATCH line: "--gres=gpu:a40:4", "--mem=0"; None: no line.
    gpu_request: str | None = None
    memory_request: str | None = None
    exclusive: bool = False
    gpu_type: str | None = None  # the GRES type written into gpu_request, if any
    # The partition's node groups the job may land on (fit its per-node needs and constraint).
    node_groups: list[NodeGroup] = field(default_factory=list)
    # how ranks start (wrapper words, srun options), extra #SBATCH options (profile ->
    # partition -> job), and folders prepended to PATH-like variables.
    launch: LaunchPlan = field(default_factory=lambda: LaunchPlan(python=sys.executable))
    extra_directives: list[str] = field(default_factory=list)
    prepend: dict[str, list[str]] = field(default_factory=dict)
    # The interpreter hpcorch was planned with (the login node's): the batch script runs its
    # own hpcorch steps (recovery) with it, outside any container the ranks run in.
    host_python: str = sys.executable
    # Nodes the registry keeps out of this profile's jobs (node -> why), excluded with the job's own.
    quarantined: dict[str, str] = field(default_factory=dict)
    # One node launcher per node forks the ranks, else one srun task per rank (hpcorch.plan.nodestep).
    node_launcher: bool = False

    @property
    def recovery_args(self) -> list[str]:
        """What ``python -m hpcorch.batch.recovery`` needs besides the stage (see the template)."""
        return ["--run-dir", str(self.run_dir), "--profile", self.profile.name,
                "--quarantine-hours", f"{self.profile.health.quarantine_hours:g}"]

    @property
    def preflight_args(self) -> list[str] | None:
        """The words after ``python -m`` of the pre-flight step; None when the job turned it
        off, or on a profile without Slurm (nothing runs the script's steps there)."""
        from hpcorch.batch.health.criteria import preflight_args

        return preflight_args(self) if self.profile.scheduler == "slurm" else None

    @property
    def preflight_step_minutes(self) -> int:
        """srun's hard limit on the pre-flight step (whole minutes, at least one): the check's
        own deadline plus the interpreter's start, in case that is what hangs."""
        timeout = self.job.health.timeout_s or self.profile.health.timeout_s
        return -(-(timeout + 60) // 60)

    @property
    def exclude(self) -> str | None:
        """The hostlist for ``--exclude``: the job's own exclusions and the quarantined nodes."""
        hosts = set(self.job.resources.exclude_hosts) | set(self.quarantined)
        return units.compress_hostlist(sorted(hosts)) if hosts else None
    # Leaf switches / blocks the job fits in, and the #SBATCH option that asks for them.
    placement: PlacementPlan | None = None

    @property
    def placement_directive(self) -> str | None:
        """``--switches=K@WAIT`` or ``--segment=S`` for the header, or None."""
        return self.placement.directive if self.placement else None

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
        """Ranks on the most nodes the job asks for (a node range: its largest valid count)."""
        return self.job.resources.world_size

    @property
    def shrink_command(self) -> list[str]:
        """A node range's batch script: the command that hands back the nodes its trainer
        cannot use (the node count in ``$HPCORCH_NODES``), see :func:`hpcorch.cluster.slurm.shrink_command`."""
        from hpcorch.cluster.slurm import shrink_command

        return shrink_command("${SLURM_JOB_ID}", "${HPCORCH_NODES}")

    @property
    def node_step_options(self) -> list[str]:
        """The training step's srun options with a node launcher: one task per node holding the
        node's CPUs (and GPUs, where the site asks them per task) for all of its ranks."""
        return nodestep.step_options(self.job.resources, self.gpu_request)

    @property
    def launched_tasks_per_node(self) -> int:
        """Tasks srun starts per node: one per rank, or one per node for a program that runs
        torchrun itself (``program.launcher: torchrun``; torchrun then starts the node's ranks)."""
        program = self.job.program
        return 1 if program is not None and program.launcher == "torchrun" else self.job.resources.tasks_per_node

    @property
    def landing_groups(self) -> list[NodeGroup]:
        """The node groups the job may land on (all of the partition's for a plan made without them)."""
        return self.node_groups or self.profile.groups_of(self.partition)

    @property
    def peak_tflops(self) -> float | None:
        """Per-GPU dense bf16 peak, the denominator of MFU: only for a GPU job, and only when every
        node type it may land on states the same one."""
        peaks = {g.spec.gpus.peak_tflops for g in self.landing_groups}
        peak = peaks.pop() if len(peaks) == 1 else 0.0
        return peak if self.job.resources.gpus_per_node and peak else None


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


def _check_loggers(job: JobSpec, profile: ClusterProfile, source: str, warnings: list[str]) -> None:
    """A logger whose package is missing: refused here, unless the job may be submitted from a
    login node over SSH (``login:``), whose own hpcorch checks its own packages."""
    from hpcorch.spec.job import check_available

    try:
        check_available(job.trainer.loggers, source)
    except HpcorchError as exc:
        if profile.login is None:
            raise
        warnings.append(f"{exc}; needed only where the job runs")


def _check_data(job: JobSpec, profile: ClusterProfile, source: str, warnings: list[str]) -> None:
    """What can be checked of the data here: prepared datasets' indexes (one tokenizer, the
    job's) and a model ``vocab`` that covers the tokenizer's ids. A dataset folder or tokenizer
    file missing here is an error, unless the job may be submitted from a login node over SSH
    (``login:``), where the data lives."""
    data = job.trainer.data
    if data.source not in ("prepared", "text", "stdlib") or (data.source != "prepared" and data.tokenizer is None):
        return
    # numpy and the tokenizers: only for prepared data or a named tokenizer
    from hpcorch.data.reader import DatasetError, check_indexes, check_vocab
    from hpcorch.data.tokenizer import TokenizerError, load_tokenizer

    try:
        if data.source == "prepared":
            check_indexes(data, job.trainer.model.vocab)
        else:
            try:
                ref = load_tokenizer(data.tokenizer).ref()
            except TokenizerError as exc:
                raise DatasetError("data.tokenizer", str(exc)) from None
            check_vocab(ref, job.trainer.model.vocab)
    except DatasetError as exc:
        missing = exc.key.endswith(("path", "tokenizer")) and "not found" in exc.message
        if missing and profile.login is not None:
            warnings.append(f"{source}: trainer.{exc.key}: {exc.message}; needed only where the job runs")
            return
        raise PlanError(source, f"trainer.{exc.key}", exc.message) from None


def make_plan(job: JobSpec, profile: ClusterProfile, run_dir: str | Path | None = None,
              source: str = "job", python: str | None = None, nccl_debug: str | None = None,
              quarantined: dict[str, str] | None = None, code_root: str | None = None) -> Plan:
    """Check that ``job`` fits ``profile`` and resolve defaults; raise PlanError if not.

    ``source`` names the job file in error messages; ``nccl_debug`` (a level such as INFO)
    sets NCCL_DEBUG for this submission only (``submit --nccl-debug``); ``quarantined``
    (node -> why) are nodes to exclude as well (see :meth:`hpcorch.state.registry.Registry.quarantined`);
    ``code_root``: where a ``program:`` job's relative code folder resolves (``submit --code``).
    """
    res = job.resources

    def fail(key: str, message: str) -> PlanError:
        return PlanError(source, key, message)

    try:
        part = profile.partition(res.partition)
    except KeyError:
        raise fail("resources.partition", f"expected one of profile {profile.name!r}'s partitions "
                   f"({', '.join(p.name for p in profile.partitions)}), got {res.partition!r}") from None
    groups = profile.groups_of(part)
    excluded = set(res.exclude_hosts)  # a set: 16k hosts x 1k exclusions stays linear
    quarantined = {h: why for h, why in (quarantined or {}).items() if h not in excluded and profile.has_host(h)}
    excluded |= set(quarantined)
    usable = [h for h in part.hosts if h not in excluded]
    # Independent checks: each kept, so that one run names every problem of the job.
    problems = Problems()
    notes: list[str] = []
    # A node range starts on what is usable (Slurm is asked for the range, the quarantined
    # nodes excluded): it needs only its fewest valid count.
    enough = res.nodes_min <= len(usable)
    if not enough:
        held = (f" ({units.brief_hosts(sorted(quarantined))} quarantined; see hpcorch nodes, "
                f"hpcorch nodes clear NODE)") if quarantined else ""
        problems.add(fail("resources.nodes", f"asks for {res.nodes_needed} nodes, but partition {part.name!r} has "
                          f"{len(usable)}{' after exclusions' if excluded else ''}{held}"))
    elif res.nodes > len(usable):
        notes.append(f"nodes: {len(usable)} of the range's {res.nodes_directive} are usable now"
                     f"{' after exclusions' if excluded else ''}; the job starts on the largest valid "
                     f"count they hold ({largest_valid(job.node_counts, len(usable))})")
    problems.check(siterequests.check_partition_limits, res, part, fail)
    candidates = groups
    typed = problems.check(check_gpu_type, res, part, groups, excluded, fail, enough)
    # What depends on a check that failed is not checked: its error would say the same again.
    fitting = problems.check(fit_node_groups, res, part, typed, fail) if typed else None
    groups = typed = typed or groups
    constraint = res.constraint or profile.defaults.constraint
    eligible = fitting or groups
    # The local executor has no features to match; too many nodes is said once, above.
    if profile.scheduler != "local" and fitting and enough:
        problems.check(check_constraint, constraint, profile, part, from_profile=not res.constraint, fail=fail)
        eligible = problems.check(check_node_counts, res, part, groups, fitting, constraint, excluded, fail,
                                  fallback=fitting)
    problems.check(check_mig, res, eligible, fail)
    warnings: list[str] = []
    problems.check(check_ranks_per_gpu, res, eligible, fail, warnings)
    qos, account = problems.check(siterequests.qos_and_account, res, profile, part, fail,
                                  fallback=(None, None))

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(job, profile)
    run_dir = run_dir.expanduser().absolute()
    if not _PATH_RE.fullmatch(str(run_dir)):
        raise PlanError("--run-dir", "", f"expected a path of letters, digits and _./+@:,=- "
                        f"(it reaches #SBATCH lines), got {str(run_dir)!r}")

    requests = profile.requests_for(part)
    gpu_request, gpu_type = problems.check(siterequests.gpu_request, res, requests, part, candidates, fail,
                                           notes, fallback=(None, None))
    memory_request = problems.check(siterequests.memory_request, res, requests, typed, fail, notes)
    for key, option in (("resources.gpus_per_node", gpu_request), ("resources.mem", memory_request)):
        problems.check(siterequests.check_directive, option, key, fail)
    problems.raise_any()  # what follows (layout, launch, placement) assumes the job fits

    # Derived from the fabric first, so that the profile's and the job's own values win.
    environment = fabric.environment(profile, eligible)
    environment.update({k: str(v) for k, v in profile.environment.variables.items()})
    environment.update({k: str(v) for k, v in job.environment.items()})
    _nccl_debugging(job, environment, nccl_debug, warnings, notes)
    if job.program is not None:  # the user's own program: no model, no layout, no loggers to check
        from hpcorch.plan.program import check_program

        check_program(job, profile.login is not None, fail, warnings, base=code_root)
    else:
        layoutplan.check_layout(job, eligible, fail, warnings)
    launch = resolve_launch(job, profile, eligible, python, fail, warnings)
    if job.program is None:  # a program's loggers and data are its own
        _check_loggers(job, profile, source, warnings)
        _check_data(job, profile, source, warnings)
    # The nodes the job may land on: its eligible node groups' hosts, minus exclusions.
    hosts = [h for h in dict.fromkeys(h for g in eligible for h in g.hosts) if h not in excluded]
    placement = plan_placement(job.placement, profile, hosts, largest_valid(job.node_counts, len(hosts)) or res.nodes,
                               fail, notes, warnings)
    directives = extra_directives(job, profile, part)
    plan = Plan(
        job=job, profile=profile, partition=part, run_dir=run_dir,
        account=account,
        qos=qos,
        constraint=constraint,
        time_minutes=units.minutes_ceil(res.time_s),
        modules=list(profile.environment.modules),
        environment=environment, source=source,
        node_groups=eligible,
        gpu_request=gpu_request, memory_request=memory_request, gpu_type=gpu_type,
        exclusive=requests.exclusive if res.exclusive is None else res.exclusive,
        python=launch.python, launch=launch, warnings=warnings, host_python=python or sys.executable,
        extra_directives=directives,
        prepend={k: list(v) for k, v in profile.environment.prepend.items()},
        quarantined=quarantined,
        placement=placement,
        node_launcher=nodestep.chosen(job, [*launch.srun_options, *directives], notes),
    )
    plan.notes += [f"excluding quarantined node {h}: {why}" for h, why in sorted(quarantined.items())]
    if part.implicit and res.partition is not None:
        plan.notes.append(f"partition {part.name!r} is implicit (the site routes jobs itself): "
                          "checked against it, but the script names no --partition")
    plan.notes += notes
    plan.notes += [f"environment {name}={profile.environment.variables[name]} from profile {profile.name!r} "
                   f"(site_tuned: the site documents it)" for name in profile.environment.site_tuned]
    plan.warnings += _unknown_exclusions(res.exclude_hosts, profile)
    range_notes, range_warnings = layoutplan.node_range_notes(job)
    plan.notes += range_notes
    plan.warnings += range_warnings
    if job.program is None and job.trainer.checkpoint.interval > job.trainer.steps:
        plan.notes.append("checkpoint.interval exceeds steps: only the final checkpoint is written")
    return plan


def _nccl_debugging(job: JobSpec, environment: dict[str, str], nccl_debug: str | None,
                    warnings: list[str], notes: list[str]) -> None:
    """A job may set NCCL's debugging variables (the plan warns: NCCL says not to keep them);
    ``--nccl-debug LEVEL`` sets NCCL_DEBUG for this submission, over the job's."""
    found = debugging_in(job.environment)
    if found:
        warnings.append(f"environment sets NCCL debugging variable{'s' if len(found) > 1 else ''} "
                        f"{', '.join(found)}: NCCL advises against keeping them outside a debugging run")
    if nccl_debug is not None:
        level = nccl_debug.upper()
        if level not in NCCL_DEBUG_LEVELS:
            raise PlanError("--nccl-debug", "", f"expected one of {', '.join(NCCL_DEBUG_LEVELS)}, got {nccl_debug!r}")
        environment["NCCL_DEBUG"] = level
        notes.append(f"NCCL_DEBUG={level} for this submission (--nccl-debug)")


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
    adds separators and units, see :mod:`hpcorch.util.display`)."""
    if plan.job.program is not None:
        return _program_summary(plan)
    job, res, tr = plan.job, plan.job.resources, plan.job.trainer
    model, family = tr.model, spec_of(tr.model).shapes
    models = " or ".join(dict.fromkeys(str(g.spec.gpus.model) for g in plan.landing_groups if g.spec.gpus.count))
    tokens_per_step = tr.global_batch * tr.model.seq_len
    summary = {
        "job": job.name,
        "profile": plan.profile.name,
        "partition": plan.partition.name,
        "nodes": res.nodes_directive if res.is_range else res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "world_size": plan.world_size,
        "gpus": f"{res.nodes * res.gpus_per_node} x {models}" if res.gpus_per_node else "none (CPU)",
        "time_limit": plan.time_limit,
        "account": plan.account or "-",
        "qos": plan.qos or "-",
        "parameters": family.num_params(model),
        "flops_per_token": round(family.flops_per_token(model)),
        "tokens_per_step": tokens_per_step,
        "grad_accumulation": job.grad_accum,
        "total_tokens": tokens_per_step * tr.steps,
        "sharding": tr.sharding,
        "layout": layoutplan.layout_summary(job),
        "checkpoint_every": f"{tr.checkpoint.interval} steps, keep {tr.checkpoint.keep}",
        "requeue": (f"on, {job.requeue.signal} {job.requeue.signal_lead_s}s before the limit"
                    if job.requeue.enabled else "off"),
        "run_dir": str(plan.run_dir),
    }
    if res.is_range:
        summary["node_counts"] = job.node_counts
    if plan.placement is not None:
        summary["placement"] = plan.placement.to_dict()
    if plan.launch.wrapper != "none":  # what starts the ranks, when it is not plain python
        summary["launch"] = f"{plan.launch.wrapper} wrapper, {plan.python}"
    if plan.peak_tflops:
        summary["peak_pflops"] = round(plan.peak_tflops * res.nodes * res.gpus_per_node / 1000, 2)
    from hpcorch.plan.verdict import summary as planner_summary

    summary.update(planner_summary(plan))  # memory per GPU, time, GPU-hours, checkpoint interval
    for i, note in enumerate(plan.notes):
        summary[f"note{i + 1}"] = note
    return summary


def _program_summary(plan: Plan) -> dict:
    """:func:`summarize` for a ``program:`` job: the resources and the program, no model."""
    from hpcorch.plan.program import summary as program_summary

    job, res = plan.job, plan.job.resources
    models = " or ".join(dict.fromkeys(str(g.spec.gpus.model) for g in plan.landing_groups if g.spec.gpus.count))
    summary = {"job": job.name, "profile": plan.profile.name, "partition": plan.partition.name,
               "nodes": res.nodes_directive if res.is_range else res.nodes, "tasks_per_node": res.tasks_per_node,
               "world_size": plan.world_size,
               "gpus": f"{res.nodes * res.gpus_per_node} x {models}" if res.gpus_per_node else "none (CPU)",
               "time_limit": plan.time_limit, "account": plan.account or "-", "qos": plan.qos or "-",
               **program_summary(job),
               "requeue": (f"on, {job.requeue.signal} {job.requeue.signal_lead_s}s before the limit"
                           if job.requeue.enabled else "off"),
               "run_dir": str(plan.run_dir)}
    if plan.placement is not None:
        summary["placement"] = plan.placement.to_dict()
    if plan.launch.wrapper != "none":
        summary["launch"] = f"{plan.launch.wrapper} wrapper, {plan.python}"
    for i, note in enumerate(plan.notes):
        summary[f"note{i + 1}"] = note
    return summary
