"""How the site wants a job's resources asked for (profile ``requests``): the GPU and memory
options in the site's style, and the QOS and account with their limits checked."""
from __future__ import annotations

from hpcorch.plan.nodefit import gpu_types
from hpcorch.plan.problems import Problems
from hpcorch.spec import units
from hpcorch.spec.launch import DIRECTIVE_VALUE
from hpcorch.spec.policy import QOS, Requests
from hpcorch.spec.profile import ClusterProfile, NodeGroup, Partition


def _written_gpu_type(res, policy: str, part: Partition, groups: list[NodeGroup], fail) -> str | None:
    """The GRES type the script asks for under the site's ``requests.gpu_type`` policy.

    ``when-typed`` writes only the job's own type: an untyped request may land on any GPU node,
    which is what the job asked. ``always`` (sites that refuse untyped requests) falls back to
    the partition's one GPU type, and refuses when there are several or none. ``never`` (sites
    with untyped GRES) cannot ask for a type, so a typed job is accepted only where every GPU
    node of the partition is of that type anyway.
    """
    types = gpu_types(groups)
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


def gpu_request(res, requests: Requests, part: Partition, groups: list[NodeGroup], fail,
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
        if res.is_range:  # a total over a count Slurm picks at the start cannot be written ahead
            raise fail("resources.nodes", f"expected one node count, got the range {res.nodes_directive}: profile "
                       "requests.gpus is 'gpus' (the job's total GPUs), which a node range cannot say")
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


def memory_request(res, requests: Requests, groups: list[NodeGroup], fail, notes: list[str]) -> str | None:
    """The memory option in the site's style (``requests.memory``), after checking that a
    per-GPU size fits the nodes; None when nothing is to be written."""
    if res.mem_per_gpu_mb is not None:
        need = res.mem_per_gpu_mb * res.gpus_per_node
        biggest = max(groups, key=lambda g: g.spec.memory_mb)
        name, most = biggest.node_type, biggest.spec.memory_mb
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


def check_directive(option: str | None, key: str, fail) -> None:
    """Belt and braces: an option bound for an #SBATCH line is in the directive alphabet that the
    template's |directive filter enforces (one alphabet, owned by the spec)."""
    if option is not None and not DIRECTIVE_VALUE.fullmatch(option):
        raise fail(key, f"refusing to write {option!r} into an #SBATCH line")


def qos_and_account(res, profile: ClusterProfile, part: Partition, fail) -> tuple[str | None, str | None]:
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
    if part.partition_qos is not None and part.partition_qos in profile.qos:
        # The partition's own QOS binds every job there, whatever QOS the job names.
        _check_qos_limits(res, f"partition {part.name!r}'s QOS {part.partition_qos!r}",
                          profile.qos[part.partition_qos], account, account_origin, fail)
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
    """Refuse what the QOS would refuse or leave pending forever (QOSMax*Limit, QOSMin*), every
    broken limit at once, each naming the limit."""
    problems = Problems()
    problems.check(_check_span, res, name, limits, fail)
    if limits.max_gpus_per_node is not None and res.gpus_per_node > limits.max_gpus_per_node:
        problems.add(fail("resources.gpus_per_node", f"asks for {res.gpus_per_node} GPUs per node, but {name} "
                          f"allows at most {limits.max_gpus_per_node} per node (MaxTRESPerNode=gres/gpu)"))
    total = res.nodes * res.gpus_per_node
    if limits.max_gpus is not None and total > limits.max_gpus:
        problems.add(fail("resources.gpus_per_node", f"asks for {total} GPU{'s' * (total != 1)} ({res.nodes} "
                          f"node{'s' * (res.nodes != 1)} x {res.gpus_per_node}), but {name} allows at most "
                          f"{limits.max_gpus} (MaxTRESPerJob=gres/gpu)"))
    if limits.accounts and account not in limits.accounts:
        got = f"got {account!r}{account_origin}" if account else "the job names none"
        problems.add(fail("resources.account", f"{name} is only for accounts {', '.join(limits.accounts)}; {got}"))
    problems.raise_any()


def _check_span(res, name: str, limits, fail, qos: bool = True) -> None:
    """Nodes and time against a partition's or a QOS's minimum and maximum (``limits`` has
    ``min_nodes``, ``max_nodes``, ``min_time_s``, ``max_time_s``); the message names the limit
    as Slurm spells it."""
    problems = Problems()
    spelled = ("MinTRESPerJob=node", "MaxTRESPerJob=node", "MaxWall") if qos else ("MinNodes", "MaxNodes", "MaxTime")
    if limits.max_time_s is not None and res.time_s > limits.max_time_s:
        problems.add(fail("resources.time", f"asks for {units.format_time(res.time_s)}, but {name} allows at most "
                          f"{units.format_time(limits.max_time_s)} ({spelled[2]})"))
    if limits.min_time_s is not None and res.time_s < limits.min_time_s:
        problems.add(fail("resources.time", f"asks for {units.format_time(res.time_s)}, but {name} takes at least "
                          f"{units.format_time(limits.min_time_s)} (the profile's min_time)"))
    if limits.max_nodes is not None and res.nodes > limits.max_nodes:
        problems.add(fail("resources.nodes", f"asks for {res.nodes} nodes, but {name} allows at most "
                          f"{limits.max_nodes} ({spelled[1]})"))
    if limits.min_nodes is not None and res.nodes_min < limits.min_nodes:  # a range: its fewest
        problems.add(fail("resources.nodes", f"asks for {res.nodes_min} node{'s' * (res.nodes_min != 1)}, but {name} "
                          f"takes at least {limits.min_nodes} ({spelled[0]})"))
    problems.raise_any()


def check_partition_limits(res, part: Partition, fail) -> None:
    """Nodes and time against the partition's MinNodes, MaxNodes, MaxTime and min_time."""
    _check_span(res, f"partition {part.name!r}", part, fail, qos=False)
