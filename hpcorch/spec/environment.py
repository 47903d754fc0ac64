"""A profile's ``environment:``: modules as sites use them, folders prepended to PATH-like
variables, exported variables, and the NCCL variables a site vouches for."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from hpcorch.spec.expand import check_expandable, check_prepend
from hpcorch.spec.schema import Invalid, check_env_names

# A module name never starts with '-': `module load --help` would run an option, not a module.
_MODULE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-/@]{0,199}")


@dataclass
class Environment:
    """Set up in every job script: ``module purge``, ``module use`` and ``module load`` lines,
    folders prepended to PATH-like variables, then exported variables (``$NAME`` in values
    expands when the job runs)."""

    modules: list[str] = field(default_factory=list)
    variables: dict[str, str | int | float] = field(default_factory=dict)
    prepend: dict[str, list[str]] = field(default_factory=dict)
    # As sites document it: `module purge`, then `module use PATH` for each path, then the loads
    # in the order written; all before prepend and variables, which may depend on them.
    module_purge: bool = False
    module_use: list[str] = field(default_factory=list)
    # NCCL variables NCCL files under debugging that this site documents for its fabric (a tuned
    # NCCL_BUFFSIZE): allowed in `variables`, each noted on the plan.
    site_tuned: list[str] = field(default_factory=list)

    def __post_init__(self):
        for i, module in enumerate(self.modules):
            if not _MODULE_RE.fullmatch(module):
                raise Invalid(f"modules[{i}]", f"expected a module name such as cuda/12.4, got {module!r}")
        for i, folder in enumerate(self.module_use):
            if ":" in folder or not re.match(r"/|\$\{?[A-Za-z_]", folder):
                raise Invalid(f"module_use[{i}]", f"expected an absolute folder of modulefiles such as "
                                                  f"/sw/modules/all or $HOME/modules, got {folder!r}")
            check_expandable(f"module_use[{i}]", folder)
        for i, name in enumerate(self.site_tuned):
            if name not in self.variables:
                raise Invalid(f"site_tuned[{i}]", f"expected a name that variables sets, got {name!r}")
        if "MODULEPATH" in self.prepend:
            raise Invalid("prepend.MODULEPATH", "takes effect after the module loads, which then cannot see "
                                                "it; use environment.module_use (module use PATH, before the loads)")
        check_env_names(self.variables)
        for name, value in self.variables.items():
            check_expandable(f"variables.{name}", value)
        check_prepend(self.prepend)
