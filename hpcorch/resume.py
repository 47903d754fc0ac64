"""Bring a job that ended without finishing back from its latest checkpoint."""
from __future__ import annotations

import os

from .spec.job import load_job
from .plan import make_plan
from .spec.profile import load_profile
from .registry import Entry, Registry
from .render import render_sbatch
from .cluster.slurm import Slurm
from .submit.executor import Submission, submit_plan
from .spec.units import compress_hostlist, expand_hostlist


def failed_nodes(entry: Entry) -> list[str]:
    """Nodes that ran the job (any of its runs, requeues included) and that Slurm now reports
    down, drained or failing: a node that failed and was brought back is not excluded."""
    slurm = Slurm(env=entry.env)
    out = slurm.run("sacct", "-j", entry.job_id, "--duplicates", "-X", "-n", "-P", "-o", "NodeList",
                    check=False)
    # The controller knows the latest allocation at once; accounting may lag behind it.
    latest = slurm.job(entry.job_id).get("NodeList", "")
    used = set()
    for nodes in out.split() + [latest]:
        if nodes and nodes not in ("None", "(null)"):
            used.update(expand_hostlist(nodes))
    unhealthy = {"DOWN", "DRAIN", "DRAINED", "DRAINING", "FAIL", "FAILING", "NOT_RESPONDING"}
    return sorted(h for h in used if slurm.node_flags(h) & unhealthy)


def resume_entry(entry: Entry, extra_exclude: str | None = None, registry: Registry | None = None) -> Submission:
    """Resubmit ``entry``'s resolved job into the same run directory (the trainer resumes from
    its latest committed checkpoint), excluding failed nodes on Slurm."""
    overrides = []
    if entry.scheduler == "slurm":
        exclude = set(expand_hostlist(entry.exclude)) if entry.exclude else set()
        exclude.update(failed_nodes(entry))
        if extra_exclude:
            exclude.update(expand_hostlist(extra_exclude))
        if exclude:
            overrides.append(f"resources.exclude={compress_hostlist(sorted(exclude))}")
    job = load_job(entry.job_file, overrides)
    plan = make_plan(job, load_profile(entry.profile), run_dir=entry.run_dir, source=entry.job_file)
    if entry.slurm_conf:  # submitit's sbatch reads it from the environment
        os.environ["SLURM_CONF"] = entry.slurm_conf
    return submit_plan(plan, render_sbatch(plan), entry.profile, registry=registry, resumed_from=entry.key)
