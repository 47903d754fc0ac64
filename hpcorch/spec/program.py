"""``program:``: a job that runs the user's own training program instead of hpcorch's trainer.

Everything else in the job (resources, launch wrapper, environment, placement, health,
requeue) applies unchanged; see :mod:`hpcorch.runtime` for the environment and the
stop/requeue contract the program sees.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from hpcorch.spec.expand import check_expandable
from hpcorch.spec.schema import Invalid, check_positive

# ``package.module`` or ``package.module:function`` (what ``python -m`` / an entry point names).
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?")
STOP_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP")


@dataclass
class ProgramSpec:
    """A command (``command: [python, train.py, --lr, "3e-4"]``) or a Python entry point
    (``module: train`` or ``module: mypkg.train:main``, with ``args``), run in ``code_dir``."""

    command: list[str] | None = None
    module: str | None = None
    args: list[str] = field(default_factory=list)
    # Where it runs (the working directory and, for ``module``, the import root). Default: the
    # folder the job is submitted from (for remote submission, the synced --code folder).
    code_dir: str | None = None
    # direct: one process per rank (per GPU), torchrun's variables set by hpcorch;
    # torchrun: one process per node that runs torchrun itself with the same rendezvous.
    launcher: Literal["direct", "torchrun"] = "direct"
    signal: Literal["USR1", "USR2", "TERM", "INT", "HUP"] = "USR2"  # what the program gets on a stop
    steps: int | None = None            # the planned steps, for status' progress (optional)
    checkpoint_dir: str | None = None   # HPCORCH_CHECKPOINT_DIR; default RUN_DIR/checkpoints

    def __post_init__(self):
        if (self.command is None) == (self.module is None):
            raise Invalid("command", "expected exactly one of program.command or program.module")
        if self.command is not None:
            if not self.command or not all(isinstance(w, str) and w for w in self.command):
                raise Invalid("command", f"expected a non-empty list of words, got {self.command!r}")
        elif not _ENTRY.fullmatch(self.module):
            raise Invalid("module", f"expected package.module or package.module:function, got {self.module!r}")
        for key, words in (("command", self.command or []), ("args", self.args)):
            for i, word in enumerate(words):  # $NAME expands from the program's environment
                check_expandable(f"{key}[{i}]", word)
        for key in ("code_dir", "checkpoint_dir"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise Invalid(key, "expected a folder, got an empty string")
        check_positive(self, "steps")

    @property
    def describe(self) -> str:
        """What runs, in one phrase (plan and status)."""
        import shlex

        words = self.command if self.command is not None else [f"module {self.module}"]
        return shlex.join([*words, *self.args]) if self.command is not None else \
            " ".join([words[0], *map(shlex.quote, self.args)])
