"""A site's rules for asking and limits: how resources are requested (``requests``) and QOS."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hpcorch.spec import units
from hpcorch.spec.schema import SLURM_MAX32, Invalid, check_account, check_at_most, check_positive


@dataclass
class Requests:
    """How a site wants resources asked for in the #SBATCH header (see the table in docs/profiles.md).

    ``gpus``: the option that asks for GPUs; ``gpu_type``: whether the GRES type is written
    (``when-typed``: only when the job asked for a type; ``always``: the job's type, else the
    partition's only one; ``never``); ``memory``: ``mem`` (--mem / --mem-per-gpu as the job
    gives them), ``mem-per-gpu`` (a per-node size is turned into a per-GPU one),
    ``whole-node`` (--mem=0 always), ``none`` (no memory option: some sites refuse --mem);
    ``exclusive``: --exclusive on every job.
    """

    gpus: Literal["gpus-per-node", "gres", "gpus", "gpus-per-task"] = "gpus-per-node"
    gpu_type: Literal["when-typed", "always", "never"] = "when-typed"
    memory: Literal["mem", "mem-per-gpu", "whole-node", "none"] = "mem"
    exclusive: bool = False


@dataclass
class RequestsOverride:
    """A partition's ``requests``: only the keys given replace the profile's."""

    gpus: Literal["gpus-per-node", "gres", "gpus", "gpus-per-task"] | None = None
    gpu_type: Literal["when-typed", "always", "never"] | None = None
    memory: Literal["mem", "mem-per-gpu", "whole-node", "none"] | None = None
    exclusive: bool | None = None

    def over(self, base: Requests) -> Requests:
        """``base`` with this override's given keys replacing its own."""
        given = {k: v for k, v in vars(self).items() if v is not None}
        return Requests(**{**vars(base), **given})


@dataclass
class QOS:
    """A Slurm QOS and the limits hpcorch checks at plan time (None: no limit known)."""

    max_time: str | int | None = None
    max_nodes: int | None = None
    min_nodes: int | None = None          # MinTRESPerJob=node=N
    min_time: str | int | None = None     # a site rule (job_submit plugin); Slurm's QOS has none
    max_gpus: int | None = None           # over the whole job
    max_gpus_per_node: int | None = None
    accounts: list[str] = field(default_factory=list)  # empty: any account may use it

    def __post_init__(self):
        try:
            self.max_time_s = None if self.max_time is None else units.parse_time(self.max_time)
        except ValueError as exc:
            raise Invalid("max_time", str(exc)) from None
        try:
            self.min_time_s = None if self.min_time is None else units.parse_time(self.min_time)
        except ValueError as exc:
            raise Invalid("min_time", str(exc)) from None
        check_positive(self, "max_nodes", "min_nodes")
        check_at_most(self, SLURM_MAX32, "Slurm's TRES counts are 32-bit here", "max_nodes", "min_nodes",
                      "max_gpus", "max_gpus_per_node")
        if self.min_nodes and self.max_nodes and self.min_nodes > self.max_nodes:
            raise Invalid("min_nodes", f"expected at most max_nodes ({self.max_nodes}), got {self.min_nodes}")
        check_positive(self, "max_gpus", "max_gpus_per_node", allow_zero=True)  # 0: a CPU-only QOS
        for i, account in enumerate(self.accounts):
            check_account(f"accounts[{i}]", account)
