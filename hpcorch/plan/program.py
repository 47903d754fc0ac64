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


def check_program(job: JobSpec, remote: bool, fail: Callable[[str, str], PlanError], warnings: list[str]) -> None:
    """Refuse, with one line, a program that cannot start from its code folder (resolved as
    :func:`code_dir` does). ``remote``: the job runs from a login node's copy of the code
    (``--code``), so a doubt here is a warning, not a refusal."""
    program = job.program
    code = code_dir(program)
    problem = _problem(program, code)
    if problem is None:
        return
    key, message = problem
    if remote:
        warnings.append(f"{key}: {message} here; it must exist where the job runs")
        return
    raise fail(key, message)


def code_dir(program) -> str:
    """``program.code_dir`` as an absolute path: relative to the folder the job is submitted from
    (the synced ``--code`` folder on a login node), which is the default. The job file in the run
    directory records it so (:func:`hpcorch.submit.executor.start`), for every rank and attempt."""
    return os.path.abspath(os.path.expanduser(program.code_dir or os.getcwd()))


def _problem(program, code: str) -> tuple[str, str] | None:
    if not os.path.isdir(code):
        return "program.code_dir", f"{code} is not a folder"
    if program.module is not None:
        from hpcorch.runtime.env import module_importable

        module = program.module.split(":")[0]
        if not module_importable(module, code):
            return "program.module", f"no module named {module!r} in {code} or the installed packages"
        return None
    first = program.command[0]
    if "/" in first:
        path = os.path.join(code, first)
        if not os.path.isfile(path):
            return "program.command", f"{first} does not exist in {code}"
        if not os.access(path, os.X_OK):
            return "program.command", f"{first} is not executable (chmod +x it, or start it with its interpreter)"
    elif shutil.which(first) is None:
        return "program.command", f"{first!r} is not on PATH"
    name = os.path.basename(first)
    script = program.command[1] if len(program.command) > 1 else None
    if name.startswith(_INTERPRETERS) and script and not script.startswith("-") and \
            not os.path.isfile(os.path.join(code, script)):
        return "program.command", f"the script {script} does not exist in {code}"
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
