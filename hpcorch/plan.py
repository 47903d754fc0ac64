"""Fit a job to a cluster profile: every check a scheduler would do, before a queue slot is spent."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import fabric
from .spec import constraint as csyntax, units
from .errors import PlanError
from .launchplan import LaunchPlan, extra_directives, resolve_launch
from .rundir import RunDir
from .spec.job import JobSpec, Resources
from .spec.profile import QOS, ClusterProfile, NodeGroup, NodeType, Partition, Requests

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
    groups = profile.groups_of(part)
    excluded = set(res.exclude_hosts)  # a set: 16k hosts x 1k exclusions stays linear
    usable = [h for h in part.hosts if h not in excluded]
    if res.nodes > len(usable):
        raise fail("resources.nodes", f"asks for {res.nodes} nodes, but partition {part.name!r} has "
                   f"{len(usable)}{' after exclusions' if res.exclude_hosts else ''}")
    candidates = _partition_node_types(profile, part)
    typed = _check_gpu_type(res, part, candidates, excluded, fail)
    if res.gpu_type is not None:  # only the nodes of that GPU type count from here on
        groups = [g for g in groups if g.node_type in {name for name, _, _ in typed}]
    fitting = _fit_node_groups(res, part, groups, fail)
    if part.max_time_s is not None and res.time_s > part.max_time_s:
        raise fail("resources.time", f"asks for {units.format_time(res.time_s)}, but partition "
                   f"{part.name!r} allows at most {units.format_time(part.max_time_s)}")

    constraint = res.constraint or profile.defaults.constraint
    eligible = fitting
    if profile.scheduler != "local":  # the local executor has no features to match
        _check_constraint(constraint, profile, part, from_profile=not res.constraint, fail=fail)
        eligible = _check_node_counts(res, part, groups, fitting, constraint, excluded, fail)
    _check_mig(res, eligible, fail)

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(job, profile)
    run_dir = run_dir.expanduser().absolute()
    if not _PATH_RE.fullmatch(str(run_dir)):
        raise PlanError("--run-dir", "", f"expected a path of letters, digits and _./+@:,=- "
                        f"(it reaches #SBATCH lines), got {str(run_dir)!r}")

    qos, account = _qos_and_account(res, profile, part, fail)
    requests = profile.requests_for(part)
    notes: list[str] = []
    gpu_request, gpu_type = _gpu_request(res, requests, part, candidates, fail, notes)
    memory_request = _memory_request(res, requests, typed, fail, notes)
    for key, option in (("resources.gpus_per_node", gpu_request), ("resources.mem", memory_request)):
        _check_directive(option, key, fail)

    # Derived from the fabric first, so that the profile's and the job's own values win.
    environment = fabric.environment(profile, part)
    environment.update({k: str(v) for k, v in profile.environment.variables.items()})
    environment.update({k: str(v) for k, v in job.environment.items()})
    warnings: list[str] = []
    launch = resolve_launch(job, profile, eligible, python, fail, warnings)
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
        python=launch.python, launch=launch, warnings=warnings,
        extra_directives=extra_directives(job, profile, part),
        prepend={k: list(v) for k, v in profile.environment.prepend.items()},
    )
    if part.implicit and res.partition is not None:
        plan.notes.append(f"partition {part.name!r} is implicit (the site routes jobs itself): "
                          "checked against it, but the script names no --partition")
    plan.notes += notes
    plan.warnings += _unknown_exclusions(res.exclude_hosts, profile)
    if job.trainer.checkpoint.interval > job.trainer.steps:
        plan.notes.append("checkpoint.interval exceeds steps: only the final checkpoint is written")
    return plan


# One (type name, node type, hosts) per group of like nodes in a partition. Every check below
# that looks at a partition's hardware takes this list, so that partitions of several node
# groups need only this function changed.
TypeGroup = tuple[str, NodeType, list[str]]


def _partition_node_types(profile: ClusterProfile, part: Partition) -> list[TypeGroup]:
    """The node types of ``part`` with their hosts."""
    return [(g.node_type, g.spec, list(g.hosts)) for g in profile.groups_of(part)]


def _gpu_types(groups: list[TypeGroup]) -> list[str | None]:
    """The GRES types of the groups that have GPUs, once each (None: untyped GRES)."""
    return list(dict.fromkeys(nt.gpus.type for _, nt, _ in groups if nt.gpus.count))


def _check_gpu_type(res, part: Partition, groups: list[TypeGroup], excluded: set[str], fail) -> list[TypeGroup]:
    """The groups a job may run on: for a typed request only those of that GRES type, with
    enough GPUs per node and enough usable nodes; Slurm would refuse a type no node has
    ("Invalid generic resource (gres) specification") and leave a too-large one pending."""
    if res.gpu_type is None:
        return groups
    key = f"resources.{res.gpu_type_key}"
    types = [t for t in _gpu_types(groups) if t is not None]
    typed = [g for g in groups if g[1].gpus.count and g[1].gpus.type == res.gpu_type]
    if not typed:
        have = f"has GPU types {', '.join(types)}" if types else "declares no GPU types (node_types.*.gpus.type)"
        raise fail(key, f"partition {part.name!r} {have}; got {res.gpu_type}")
    most = max(nt.gpus.count for _, nt, _ in typed)
    if res.gpus_per_node > most:
        raise fail("resources.gpus_per_node", f"asks for {res.gpus_per_node} {res.gpu_type} GPUs per node, but "
                   f"partition {part.name!r} {res.gpu_type} nodes have at most {most}")
    hosts = [h for _, nt, group in typed if nt.gpus.count >= res.gpus_per_node for h in group if h not in excluded]
    if res.nodes > len(hosts):
        raise fail("resources.nodes", f"asks for {res.nodes} nodes with GPU type {res.gpu_type}, but partition "
                   f"{part.name!r} has {len(hosts)}{' after exclusions' if excluded else ''}")
    return typed


def _written_gpu_type(res, policy: str, part: Partition, groups: list[TypeGroup], fail) -> str | None:
    """The GRES type the script asks for under the site's ``requests.gpu_type`` policy.

    ``when-typed`` writes only the job's own type: an untyped request may land on any GPU node,
    which is what the job asked. ``always`` (sites that refuse untyped requests) falls back to
    the partition's one GPU type, and refuses when there are several or none. ``never`` (sites
    with untyped GRES) cannot ask for a type, so a typed job is accepted only where every GPU
    node of the partition is of that type anyway.
    """
    types = _gpu_types(groups)
    if policy == "when-typed":
        return res.gpu_type
    if policy == "never":
        if res.gpu_type is not None and types != [res.gpu_type]:
            raise fail(f"resources.{res.gpu_type_key}", f"profile requests.gpu_type is 'never' (this site asks "
                       f"for untyped GPUs), and partition {part.name!r} also has GPUs other than "
                       f"{res.gpu_type}; drop the type and choose nodes with resources.constraint")
        return None
    if res.gpu_type is not None:
        return res.gpu_type
    if len(types) == 1 and types[0] is not None:
        return types[0]
    have = (f"several ({', '.join(str(t) for t in types)})" if len(types) > 1
            else "none declared (node_types.*.gpus.type)")
    raise fail("resources.gpu_type", f"profile requests.gpu_type is 'always' (this site needs a GPU type), and "
               f"partition {part.name!r} GPU types are {have}; set resources.gpu_type")


def _gpu_request(res, requests: Requests, part: Partition, groups: list[TypeGroup], fail,
                 notes: list[str]) -> tuple[str | None, str | None]:
    """The option that asks for the job's GPUs in the site's style, and the type it writes."""
    if not res.gpus_per_node:
        return None, None
    gpu_type = _written_gpu_type(res, requests.gpu_type, part, groups, fail)
    typed = f"{gpu_type}:" if gpu_type else ""
    n = res.gpus_per_node
    if requests.gpus == "gres":
        return f"--gres=gpu:{typed}{n}", gpu_type
    if requests.gpus == "gpus":
        if res.nodes > 1:
            # --gpus is the job's total: nothing in it says "n per node", and Slurm may split it unevenly.
            notes.append(f"GPUs asked as --gpus={typed}{res.nodes * n}, the job's total (profile requests.gpus): "
                         f"Slurm may place other than {n} on a node")
        return f"--gpus={typed}{res.nodes * n}", gpu_type
    if requests.gpus == "gpus-per-task":
        if n % res.tasks_per_node:
            raise fail("resources.tasks_per_node", f"profile requests.gpus is 'gpus-per-task', but "
                       f"{n} GPUs per node do not divide among {res.tasks_per_node} tasks per node")
        return f"--gpus-per-task={typed}{n // res.tasks_per_node}", gpu_type
    return f"--gpus-per-node={typed}{n}", gpu_type


def _memory_request(res, requests: Requests, groups: list[TypeGroup], fail, notes: list[str]) -> str | None:
    """The memory option in the site's style (``requests.memory``), after checking that a
    per-GPU size fits the nodes; None when nothing is to be written."""
    if res.mem_per_gpu_mb is not None:
        need = res.mem_per_gpu_mb * res.gpus_per_node
        name, most = max(((name, nt.memory_mb) for name, nt, _ in groups), key=lambda g: g[1])
        if need > most:
            raise fail("resources.mem_per_gpu", f"asks for {res.gpus_per_node} GPUs x {res.mem_per_gpu_mb} MB = "
                       f"{need} MB per node, but {name} nodes have {most} MB")
    style = requests.memory
    if style == "none":
        if res.mem_mb is not None or res.mem_per_gpu_mb is not None:
            notes.append("resources.mem/mem_per_gpu checked but not written: profile requests.memory is "
                         "'none' (the site sets job memory itself)")
        return None
    if style == "whole-node" or res.mem_mb == 0:
        return "--mem=0"
    if res.mem_per_gpu_mb is not None:
        return f"--mem-per-gpu={res.mem_per_gpu_mb}M"
    if res.mem_mb is None:
        return None
    if style == "mem-per-gpu" and res.gpus_per_node:
        per_gpu = res.mem_mb // res.gpus_per_node
        if per_gpu * res.gpus_per_node != res.mem_mb:
            notes.append(f"resources.mem {res.mem_mb} MB asked as {per_gpu} MB per GPU (rounded down)")
        return f"--mem-per-gpu={per_gpu}M"
    return f"--mem={res.mem_mb}M"


def _check_directive(option: str | None, key: str, fail) -> None:
    """Belt and braces: an option bound for an #SBATCH line passes the template's |directive filter."""
    if option is None:
        return
    from .errors import RenderError
    from .render import directive  # here, not at the top: render imports this module

    try:
        directive(option)
    except RenderError as exc:
        raise fail(key, str(exc)) from None


def _qos_and_account(res, profile: ClusterProfile, part: Partition, fail) -> tuple[str | None, str | None]:
    """The job's QOS (job, else the partition's default_qos, else defaults.qos) and account
    (job, else the partition's, else defaults.account), checked against the profile's QOS."""
    account, account_origin = res.account, ""
    if account is None and part.account is not None:
        account, account_origin = part.account, f" (partition {part.name!r}'s account)"
    elif account is None and profile.defaults.account is not None:
        account, account_origin = profile.defaults.account, f" (profile {profile.name!r}'s defaults.account)"
    qos, origin = res.qos, ""
    if qos is None and part.default_qos is not None:
        qos, origin = part.default_qos, f" (partition {part.name!r}'s default_qos)"
    elif qos is None and profile.defaults.qos is not None:
        qos, origin = profile.defaults.qos, f" (profile {profile.name!r}'s defaults.qos)"
    if qos is None:
        return None, account
    if profile.qos and qos not in profile.qos:
        raise fail("resources.qos", f"expected one of profile {profile.name!r}'s QOS "
                   f"({', '.join(profile.qos)}), got {qos!r}")
    if part.qos and qos not in part.qos:
        raise fail("resources.qos", f"QOS {qos!r}{origin} is not allowed in partition {part.name!r}, "
                   f"which allows {', '.join(part.qos)}")
    if qos in profile.qos:
        _check_qos_limits(res, f"QOS {qos!r}{origin}", profile.qos[qos], account, account_origin, fail)
    return qos, account


def _check_qos_limits(res, name: str, limits: QOS, account: str | None, account_origin: str, fail) -> None:
    """Refuse what the QOS would refuse or leave pending forever (QOSMax*Limit), numbers included."""
    if limits.max_time_s is not None and res.time_s > limits.max_time_s:
        raise fail("resources.time", f"asks for {units.format_time(res.time_s)}, but {name} allows at most "
                   f"{units.format_time(limits.max_time_s)}")
    if limits.max_nodes is not None and res.nodes > limits.max_nodes:
        raise fail("resources.nodes", f"asks for {res.nodes} nodes, but {name} allows at most {limits.max_nodes}")
    if limits.max_gpus_per_node is not None and res.gpus_per_node > limits.max_gpus_per_node:
        raise fail("resources.gpus_per_node", f"asks for {res.gpus_per_node} GPUs per node, but {name} allows "
                   f"at most {limits.max_gpus_per_node} per node")
    total = res.nodes * res.gpus_per_node
    if limits.max_gpus is not None and total > limits.max_gpus:
        raise fail("resources.gpus_per_node", f"asks for {total} GPU{'s' * (total != 1)} ({res.nodes} "
                   f"node{'s' * (res.nodes != 1)} x {res.gpus_per_node}), but {name} allows at most {limits.max_gpus}")
    if limits.accounts and account not in limits.accounts:
        got = f"got {account!r}{account_origin}" if account else "the job names none"
        raise fail("resources.account", f"{name} is only for accounts {', '.join(limits.accounts)}; {got}")


def constraint_features(constraint: str) -> list[str]:
    """The feature names in a Slurm constraint, in order, once each (counts and operators dropped)."""
    return csyntax.features(csyntax.parse(constraint))


def _check_constraint(constraint: str | None, profile: ClusterProfile, part: Partition, *,
                      from_profile: bool, fail) -> None:
    """Refuse a constraint naming a feature no node of the partition has: Slurm would refuse it
    at submit time ("Invalid feature specification"), after the queue wait for a slot in sbatch."""
    if not constraint:
        return
    groups = profile.groups_of(part)
    have = list(dict.fromkeys(f for g in groups for f in g.spec.features))
    unknown = [f for f in constraint_features(constraint) if f not in have]
    if unknown:
        origin = f" (from profile {profile.name!r}'s defaults.constraint)" if from_profile else ""
        raise fail("resources.constraint",
                   f"{constraint!r}{origin} names feature{'s' if len(unknown) > 1 else ''} "
                   f"{', '.join(unknown)} that no node of partition {part.name!r} "
                   f"({', '.join(g.node_type for g in groups)}) has; "
                   f"its features: {', '.join(have) if have else 'none'}")


# ----- node groups: which node types can run the job ------------------------------------------
# Each per-node need: (key, what the job asks per node, what a node type has, a unit). Kept as
# data so that another per-node check (GPU types, for one) is one more entry or one more filter.
@dataclass(frozen=True)
class _Need:
    key: str
    asked: int | None
    phrase: str  # how the job asks: "2 tasks x 4 CPUs = 8 CPUs per node"
    brief: str   # the amount alone: "8 CPUs per node"
    unit: str
    have: object  # NodeType -> int


def _node_needs(res: Resources) -> list[_Need]:
    cpus = res.tasks_per_node * res.cpus_per_task
    gpus = f"{res.gpus_per_node} GPUs per node"
    return [
        _Need("resources.gpus_per_node", res.gpus_per_node or None, gpus, gpus, "", lambda nt: nt.gpus.count),
        _Need("resources.cpus_per_task", cpus,
              f"{res.tasks_per_node} tasks x {res.cpus_per_task} CPUs = {cpus} CPUs per node",
              f"{cpus} CPUs per node", "", lambda nt: nt.cpus),
        _Need("resources.mem", res.mem_mb, f"{res.mem_mb} MB per node", f"{res.mem_mb} MB per node", " MB",
              lambda nt: nt.memory_mb),
    ]


def _per_node(needs) -> str:
    """'8 GPUs, 64 CPUs and 2000 MB per node'."""
    amounts = [n.brief.removesuffix(" per node") for n in needs]
    return (", ".join(amounts[:-1]) + " and " if len(amounts) > 1 else "") + amounts[-1] + " per node"


def _shortfalls(needs: list[_Need], spec: NodeType) -> list[_Need]:
    """The needs a node of this type cannot meet."""
    return [n for n in needs if n.asked is not None and n.asked > n.have(spec)]


def _fit_node_groups(res: Resources, part: Partition, groups: list[NodeGroup], fail) -> list[NodeGroup]:
    """The partition's node groups whose nodes have what the job asks per node; refuse (naming
    the closest) when none has. One need at a time first, so the message names what is short."""
    needs = _node_needs(res)
    for need in needs:
        if need.asked is None:
            continue
        best = max(need.have(g.spec) for g in groups)
        if need.asked > best:
            if all(need.have(g.spec) == best for g in groups):
                raise fail(need.key, f"asks for {need.phrase}, but partition {part.name!r} nodes "
                           f"({', '.join(g.node_type for g in groups)}) have {best}{need.unit}")
            tops = [g.node_type for g in groups if need.have(g.spec) == best]
            raise fail(need.key, f"asks for {need.phrase}, but partition {part.name!r} nodes have at most "
                       f"{best}{need.unit} ({', '.join(tops)})")
    fitting = [g for g in groups if not _shortfalls(needs, g.spec)]
    if not fitting:  # each need is met by some type, but no type meets them all
        closest = min(groups, key=lambda g: len(_shortfalls(needs, g.spec)))
        short = _shortfalls(needs, closest.spec)
        lacks = ", ".join(f"{n.have(closest.spec)}{n.unit} of {n.brief}" for n in short)
        raise fail(short[0].key, f"asks for {_per_node(n for n in needs if n.asked)}, but no node "
                   f"type of partition {part.name!r} has all of that; the closest, {closest.node_type}, "
                   f"has {lacks}")
    return fitting


def _check_node_counts(res: Resources, part: Partition, groups: list[NodeGroup], fitting: list[NodeGroup],
                       constraint: str | None, excluded: set[str], fail) -> list[NodeGroup]:
    """Enough nodes that both fit the job and satisfy its constraint (Slurm would leave the job
    pending forever otherwise); also the ``feature*N`` counts. Returns the node groups the job
    may land on."""
    expr = csyntax.parse(constraint) if constraint else None
    choices = csyntax.alternatives(expr) if expr else [None]

    def hosts_of(gs: list[NodeGroup]) -> list[str]:
        return [h for g in gs for h in g.hosts if h not in excluded]

    def eligible(alt) -> list[NodeGroup]:
        return [g for g in fitting if alt is None or csyntax.matches(alt, frozenset(g.spec.features))]

    ranked = sorted((-len(hosts_of(eligible(alt))), i) for i, alt in enumerate(choices))
    best = choices[ranked[0][1]]
    groups_ok = eligible(best)
    hosts = hosts_of(groups_ok)
    if res.nodes > len(hosts):
        qualifiers = []
        if expr is not None:
            qualifiers.append(f"with feature {constraint}" if len(csyntax.features(expr)) == 1 and not csyntax.counted(expr)
                              else f"matching {constraint!r}" if len(choices) == 1
                              else f"all matching one alternative of {constraint!r}")
        if len(fitting) < len(groups):
            dropped = [g for g in groups if g not in fitting]
            needs = _shortfalls(_node_needs(res), dropped[0].spec)
            qualifiers.append(f"with {_per_node(needs)}")
        where = f" ({units.compress_hostlist(hosts)})" if hosts else ""
        raise fail("resources.constraint" if expr is not None else "resources.nodes",
                   f"asks for {res.nodes} nodes {' and '.join(qualifiers)}, but partition {part.name!r} has "
                   f"{len(hosts)}{' after exclusions' if excluded & set(part.hosts) else ''}{where}")
    for term, count in csyntax.counted(best) if best is not None else []:
        have = hosts_of([g for g in groups_ok if csyntax.matches(term, frozenset(g.spec.features))])
        if count > len(have):
            raise fail("resources.constraint", f"asks for {count} nodes with {csyntax.show(term, top=False)} "
                       f"({constraint}), but partition {part.name!r} has {len(have)}"
                       f"{f' ({units.compress_hostlist(have)})' if have else ''}")
    # With a matching OR, the job may land on any alternative that has enough nodes.
    fits = [alt for alt in choices if len(hosts_of(eligible(alt))) >= res.nodes]
    return [g for g in fitting if any(g in eligible(alt) for alt in fits)]


def _check_mig(res: Resources, eligible: list[NodeGroup], fail) -> None:
    """A process sees one MIG instance, and NCCL cannot run collectives between MIG instances:
    on MIG slices a job is one rank with one slice."""
    mig = [g for g in eligible if g.spec.gpus.mig]
    if not mig or not res.gpus_per_node:
        return
    slices = f"MIG slices ({mig[0].spec.gpus.mig} on {mig[0].node_type})"
    if res.world_size > 1:
        raise fail("resources.nodes" if res.nodes > 1 else "resources.tasks_per_node",
                   f"asks for {res.world_size} ranks on {slices}: NCCL cannot run collectives between MIG "
                   f"instances, so a job there is 1 node x 1 task")
    if res.gpus_per_node > 1:
        raise fail("resources.gpus_per_node", f"asks for {res.gpus_per_node} GPUs per node on {slices}: "
                   f"a process sees only one MIG instance")


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
    gpus = [g.spec.gpus for g in plan.node_groups or plan.profile.groups_of(plan.partition)]
    gpu = gpus[0]
    models = " or ".join(dict.fromkeys(str(g.model) for g in gpus if g.count))
    tokens_per_step = tr.global_batch * tr.model.seq_len
    summary = {
        "job": job.name,
        "profile": plan.profile.name,
        "partition": plan.partition.name,
        "nodes": res.nodes,
        "tasks_per_node": res.tasks_per_node,
        "world_size": plan.world_size,
        "gpus": f"{res.nodes * res.gpus_per_node} x {models}" if res.gpus_per_node else "none (CPU)",
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
    if plan.launch.wrapper != "none":  # what starts the ranks, when it is not plain python
        summary["launch"] = f"{plan.launch.wrapper} wrapper, {plan.python}"
    if gpu.peak_tflops and res.gpus_per_node and len({g.peak_tflops for g in gpus}) == 1:
        summary["peak_pflops"] = round(gpu.peak_tflops * res.nodes * res.gpus_per_node / 1000, 2)
    for i, note in enumerate(plan.notes):
        summary[f"note{i + 1}"] = note
    return summary
