"""What the job commands need beside :mod:`hpcorch.service`'s lifecycle functions: a plan as
plain data, whether a submission goes over SSH, and what a checkpointed stop exits with."""
from __future__ import annotations

from hpcorch.plan.plan import Plan
from hpcorch.protocol import CHECKPOINTED

__all__ = ["CHECKPOINTED", "goes_remote", "summary"]


def summary(plan: Plan) -> dict:
    """The plan as JSON-ready data: what ``hpcorch plan`` prints (a table, or with ``--json`` as is)."""
    from hpcorch.plan.plan import summarize

    return summarize(plan)


def goes_remote(plan: Plan, remote: bool | None, code_dir: str | None = None) -> bool:
    """Whether submitting ``plan`` goes to the profile's login node over SSH: ``remote`` True or
    False decides; None: when the profile has ``login:`` and this machine has no ``sbatch``.
    Going there, a ``program:`` job must be able to find its code there (``code_dir``: ``--code``)."""
    from hpcorch.remote.ops import check_code_dir, wanted

    going = wanted(plan.profile, remote, str(plan.profile_ref or plan.profile.name))
    if going:
        check_code_dir(plan, code_dir)
    return going
