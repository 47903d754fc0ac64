"""The plan of a ``program:`` job: what can be checked here without a model (the program's code
folder, its executable or script, its Python module), and its lines of ``hpcorch plan``."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from hpcorch.errors import PlanError
from hpcorch.spec.job import JobSpec

# Interpreters whose first argument is a script file in the code folder (python train.py).
_INTERPRETERS = ("python", "python3", "bash", "sh")


def check_program(job: JobSpec, remote: bool, fail: Callable[[str, str], PlanError], warnings: list[str],
                  base: str | None = None) -> None:
    """Refuse, with one line, a program that cannot start from its code folder (resolved as
    :func:`code_dir` does, against ``base``). ``remote``: the job runs from a login node's copy of
    the code, so a doubt here is a warning, not a refusal; but with ``base`` (the ``--code``
    folder, which is synced as it is) a file missing in it is missing there too: refused."""
    program = job.program
    code = code_dir(program, base)
    problem = _problem(program, code)
    if problem is None:
        return
    key, message, environmental = problem
    synced = base is not None and not os.path.isabs(os.path.expanduser(program.code_dir or "."))
    if remote and (not synced or environmental):
        warnings.append(f"{key}: {message} here; it must exist where the job runs")
        return
    raise fail(key, message)


def code_dir(program, base: str | None = None) -> str:
    """``program.code_dir`` as an absolute path: relative to ``base``, by default the folder the
    job is submitted from (the synced ``--code`` folder on a login node), which is also the
    default code folder. The job file in the run directory records it so
    (:func:`hpcorch.submit.executor.start`), for every rank and attempt."""
    return os.path.abspath(os.path.join(base or os.getcwd(), os.path.expanduser(program.code_dir or ".")))


def _problem(program, code: str) -> tuple[str, str, bool] | None:
    """What stops the program starting from ``code``: (key, message, whether it depends on the
    machine's installed packages or PATH rather than on the code folder's files)."""
    if not os.path.isdir(code):
        return "program.code_dir", f"{code} is not a folder", False
    if program.module is not None:
        from hpcorch.runtime.env import module_importable

        module = program.module.split(":")[0]
        if not module_importable(module, code):
            return "program.module", f"no module named {module!r} in {code} or the installed packages", True
        return None
    first = program.command[0]
    if "/" in first:
        path = os.path.join(code, first)
        if not os.path.isfile(path):
            return "program.command", f"{first} does not exist in {code}", False
        if not os.access(path, os.X_OK):
            return ("program.command", f"{first} is not executable (chmod +x it, or start it with its interpreter)",
                    False)
    elif shutil.which(first) is None:
        return "program.command", f"{first!r} is not on PATH", True
    name = os.path.basename(first)
    script = program.command[1] if len(program.command) > 1 else None
    if name.startswith(_INTERPRETERS) and script and not script.startswith("-") and \
            not os.path.isfile(os.path.join(code, script)):
        return "program.command", f"the script {script} does not exist in {code}", False
    return None


def summary(job: JobSpec) -> dict:
    """``hpcorch plan``'s lines about the program (instead of the model's)."""
    program = job.program
    lines = {"program": program.describe, "code_dir": program.code_dir,
             "launcher": ("torchrun, one per node" if program.launcher == "torchrun"
                          else "one process per rank, torchrun's variables"),
             "stop_signal": f"SIG{program.signal} to the program, exit 3 to be requeued"}
    if program.steps:
        lines["steps"] = program.steps
    return lines
