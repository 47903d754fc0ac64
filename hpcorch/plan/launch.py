"""Resolve a job's and its profile's ``launch:`` and extra directives into what the script writes.

The rank command is always ``[PREFIX...] PYTHON -u -m submitit.core._submit FOLDER``: a wrapper
adds words before the interpreter (apptainer exec, a user's command) or srun options (pyxis,
uenv, edf). submitit itself is told only ``PYTHON -u -m ...`` (its command check compares that
part), so a wrapper never changes what submitit pickles or where.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from hpcorch.plan.fabric import gpu_vendor
from hpcorch.spec.job import JobSpec
from hpcorch.spec.launch import NoWrapper, merge_options
from hpcorch.spec.profile import ClusterProfile, NodeGroup, Partition

# The interpreter inside a container or user environment when launch.python names none: the
# submitting machine's sys.executable means nothing there, the image's python3 on PATH does.
CONTAINER_PYTHON = "python3"
# Wrappers that exist only as srun options: without srun (the local profile) the ranks would run
# outside the container or environment the job asked for, so planning refuses them.
SRUN_ONLY = ("pyxis", "uenv", "edf")


@dataclass
class LaunchPlan:
    """How each rank is started: ``srun [hpcorch's options] SRUN_OPTIONS PREFIX PYTHON ...``."""

    python: str
    wrapper: str = "none"
    prefix: list[str] = field(default_factory=list)
    srun_options: list[str] = field(default_factory=list)


def resolve_launch(job: JobSpec, profile: ClusterProfile, groups: list[NodeGroup], python: str | None,
                   fail, warnings: list[str]) -> LaunchPlan:
    """The job's ``launch`` over the profile's; ``python`` (a caller's override) wins over both.
    ``groups``: the node groups the job may land on (their GPU vendor picks --nv or --rocm).
    ``fail(key, message)`` builds the PlanError; doubts are appended to ``warnings``."""
    mine, theirs = job.launch, profile.launch
    wrapper = mine.wrapper if mine.wrapper is not None else theirs.wrapper or NoWrapper()
    whose = "" if mine.wrapper is not None else f" (from profile {profile.name!r})"
    if profile.scheduler == "local" and wrapper.kind in SRUN_ONLY:
        raise fail("launch.wrapper", f"kind {wrapper.kind!r}{whose} is a set of srun options, and profile "
                   f"{profile.name!r} starts ranks without srun; use a Slurm profile")
    srun_options = merge_options(wrapper.srun_options(), theirs.srun_options, mine.srun_options)
    if profile.scheduler == "local" and (theirs.srun_options or mine.srun_options):
        warnings.append(f"launch.srun_options are ignored: profile {profile.name!r} starts ranks without srun")
    activating = mine if mine.activate is not None else theirs
    # Inside a container, or after an activation step, the interpreter is the one on that PATH.
    default = CONTAINER_PYTHON if wrapper.in_container or activating.activate else sys.executable
    # NVIDIA unless every GPU node the job may land on is AMD (apptainer's --nv or --rocm).
    vendor = (gpu_vendor(groups) or "nvidia") if job.resources.gpus_per_node else None
    # The activation step (the job's over the profile's, as a pair) runs inside the wrapper.
    return LaunchPlan(python=python or mine.python or theirs.python or default, wrapper=wrapper.kind,
                      prefix=wrapper.prefix(vendor) + activating.activation(), srun_options=srun_options)


def extra_directives(job: JobSpec, profile: ClusterProfile, part: Partition) -> list[str]:
    """Profile, then partition, then job: a later option of the same name replaces an earlier one."""
    return merge_options(profile.extra_directives, part.extra_directives, job.resources.extra_directives)


def profile_launch(profile: ClusterProfile) -> LaunchPlan:
    """The profile's own ``launch`` with no job over it: for an srun step that is no training
    rank but must run where the ranks run (a data prepare array task: the same wrapper, srun
    options, activation step and interpreter; no GPUs, so apptainer's ``gpu: auto`` adds none)."""
    theirs = profile.launch
    wrapper = theirs.wrapper or NoWrapper()
    default = CONTAINER_PYTHON if wrapper.in_container or theirs.activate else sys.executable
    return LaunchPlan(python=theirs.python or default, wrapper=wrapper.kind,
                      prefix=wrapper.prefix(None) + theirs.activation(),
                      srun_options=merge_options(wrapper.srun_options(), theirs.srun_options))
