"""How ranks start on compute nodes (``launch:`` in a profile or a job) and extra ``#SBATCH``
directives.

Everything here is validated text: the template writes it through ``|q``, ``|expand`` or
``|directive`` (see :mod:`hpcorch.render.sbatch`), and these checks make sure no value needs more than
that. Values that expand at run time follow :mod:`.expand`'s grammar.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from hpcorch.spec.expand import check_expandable
from hpcorch.spec.schema import Invalid

# ----- option lists ---------------------------------------------------------------------------
# A long option as sbatch/srun read it: --name or --name=value. Values keep to an alphabet with
# no whitespace, quotes, '#', '$' or '\\' (srun options are shell-quoted as well).
_OPTION = re.compile(r"--([a-z][a-z0-9-]*[a-z0-9])(?:=(.+))?")
_SRUN_VALUE = re.compile(r"[A-Za-z0-9_./:=,@%+*-]+")
# What may stand in an #SBATCH value: sbatch splits those lines itself (no shell), so no
# whitespace, quotes, '#' or control characters. The one alphabet: hpcorch.render.sbatch's |directive uses it.
DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_./:=,@%+\-\[\]&|*!()]+")


def _owned(name: str, owners: dict[str, str]) -> tuple[str, str] | None:
    """The owned option ``name`` spells, also as an abbreviation: sbatch and srun accept any
    unambiguous prefix of a long option (``--part=x`` is ``--partition=x``)."""
    if name in owners:
        return name, owners[name]
    for full, key in owners.items():
        if full.startswith(name):
            return full, key
    return None


# Options that change what the program does rather than what the job asks for: the script
# would print help, submit nothing, block, or print differently for hpcorch to read.
_HELP = "it prints its help and runs nothing"
SBATCH_ACTIONS = {"help": _HELP, "usage": _HELP, "version": "it prints its version and submits nothing",
                  "test-only": "it only estimates a start time and submits nothing; submit --check does that",
                  "wait": "sbatch would block until the job ends", "parsable": "it changes the output hpcorch reads"}
SRUN_ACTIONS = {"help": _HELP, "usage": _HELP, "version": "it prints its version and runs no ranks",
                "test-only": "it starts no ranks"}


def _check_options(key: str, options: list[str], value_re: re.Pattern, owners: dict[str, str],
                   tool: str, actions: dict[str, str] | None = None) -> None:
    for i, option in enumerate(options):
        match = _OPTION.fullmatch(option)
        if not match or (match.group(2) is not None and not value_re.fullmatch(match.group(2))):
            raise Invalid(f"{key}[{i}]", f"expected --name or --name=value ({tool} option; values of "
                                         f"letters, digits and {_alphabet_extra(value_re)}), got {option!r}")
        action = _owned(match.group(1), actions or {})
        if action:
            raise Invalid(f"{key}[{i}]", f"--{action[0]} changes what {tool.split()[-1]} does, not what the job "
                                         f"asks for ({action[1]}); remove it")
        owned = _owned(match.group(1), owners)
        if owned:
            what = "" if owned[0] == match.group(1) else f" (an abbreviation of --{owned[0]})"
            raise Invalid(f"{key}[{i}]", f"--{match.group(1)}{what} is written by hpcorch itself; "
                                         f"use {owned[1]}")


def _alphabet_extra(value_re: re.Pattern) -> str:
    return "_./:=,@%+*-" if value_re is _SRUN_VALUE else "_./:=,@%+-[]&|*!()"


def option_name(option: str) -> str:
    """``--name=value`` -> ``name``."""
    return option[2:].split("=", 1)[0]


def merge_options(*layers: list[str]) -> list[str]:
    """Options in order of first appearance, a later layer's option replacing an earlier one of
    the same name (in place)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for option in layer:
            merged[option_name(option)] = option
    return list(merged.values())


_RES = "resources"
# #SBATCH options hpcorch writes (or must not be changed under it) -> the key that sets them.
SBATCH_OWNED = {
    "job-name": "the job's name", "partition": f"{_RES}.partition", "nodes": f"{_RES}.nodes",
    "ntasks": f"{_RES}.tasks_per_node", "ntasks-per-node": f"{_RES}.tasks_per_node",
    "ntasks-per-socket": f"{_RES}.tasks_per_node", "ntasks-per-core": f"{_RES}.tasks_per_node",
    "ntasks-per-gpu": f"{_RES}.tasks_per_node", "cpus-per-task": f"{_RES}.cpus_per_task",
    "cpus-per-gpu": f"{_RES}.cpus_per_task", "gpus": f"{_RES}.gpus_per_node",
    "gpus-per-node": f"{_RES}.gpus_per_node",
    "gpus-per-task": f"{_RES}.gpus_per_node (and the profile's requests.gpus)",
    "gpus-per-socket": f"{_RES}.gpus_per_node",
    "gres": f"{_RES}.gpus_per_node / gpu_type (and the profile's requests.gpus)",
    "mem": f"{_RES}.mem", "mem-per-cpu": f"{_RES}.mem", "mem-per-gpu": f"{_RES}.mem_per_gpu",
    "time": f"{_RES}.time", "account": f"{_RES}.account (or the profile's defaults.account)",
    "qos": f"{_RES}.qos (or the profile's defaults.qos)",
    "constraint": f"{_RES}.constraint (or the profile's defaults.constraint)",
    "exclude": f"{_RES}.exclude", "requeue": "requeue.enabled", "no-requeue": "requeue.enabled",
    "signal": "requeue.signal and requeue.signal_lead_s", "open-mode": "nothing: hpcorch appends to its logs",
    "output": "nothing: hpcorch writes logs into the run directory",
    "error": "nothing: hpcorch writes logs into the run directory",
    "exclusive": f"{_RES}.exclusive (or the profile's requests.exclusive)",
    "switches": "placement.switches and placement.max_wait",
    "segment": "placement.switches (on a profile with blocks)",
    "array": "one job per run: submit again instead", "wrap": "nothing: hpcorch writes the script",
    "export": "environment.variables (profile) or environment (job)",
    "export-file": "environment.variables (profile) or environment (job)",
    "uid": "nothing: jobs run as the submitting user", "gid": "nothing: jobs run as the submitting user",
}
# srun options hpcorch sets on the rank step, or that would change what a rank is.
SRUN_OWNED = {
    "output": "nothing: hpcorch writes rank logs into the run directory",
    "error": "nothing: hpcorch writes rank logs into the run directory", "input": "nothing: ranks read no input",
    "kill-on-bad-exit": "nothing: a failed rank ends the others", "unbuffered": "nothing: rank output is unbuffered",
    "ntasks": f"{_RES}.tasks_per_node", "ntasks-per-node": f"{_RES}.tasks_per_node",
    "ntasks-per-socket": f"{_RES}.tasks_per_node", "ntasks-per-core": f"{_RES}.tasks_per_node",
    "ntasks-per-gpu": f"{_RES}.tasks_per_node", "nodes": f"{_RES}.nodes",
    "cpus-per-task": f"{_RES}.cpus_per_task", "gpus": f"{_RES}.gpus_per_node",
    "gpus-per-node": f"{_RES}.gpus_per_node", "gpus-per-task": f"{_RES}.gpus_per_node",
    "gres": f"{_RES}.gpus_per_node", "mem": f"{_RES}.mem", "time": f"{_RES}.time",
    "partition": f"{_RES}.partition", "account": f"{_RES}.account", "qos": f"{_RES}.qos",
    "job-name": "the job's name", "export": "environment.variables (profile) or environment (job)",
    "container-image": "launch.wrapper (kind: pyxis)", "container-mounts": "launch.wrapper (kind: pyxis)",
    "container-workdir": "launch.wrapper (kind: pyxis)", "uenv": "launch.wrapper (kind: uenv)",
    "view": "launch.wrapper (kind: uenv)", "environment": "launch.wrapper (kind: edf)",
    "pty": "nothing: ranks are not interactive",
}


def check_directives(key: str, directives: list[str]) -> None:
    """Extra ``#SBATCH`` options: ``--name[=value]`` in the directive alphabet, none that hpcorch
    writes itself (the message names the key to use instead)."""
    _check_options(key, directives, DIRECTIVE_VALUE, SBATCH_OWNED, "an sbatch", SBATCH_ACTIONS)


# ----- wrappers -------------------------------------------------------------------------------
_ABS_PATH = re.compile(r"/[^\s:,]*")
_IMAGE_URI = re.compile(r"(docker|docker-daemon|library|oras|shub|instance|oci|oci-archive|docker-archive)"
                        r"://[A-Za-z0-9_./:@+-]+")
_PYXIS_IMAGE = re.compile(r"(docker://)?[A-Za-z0-9_.+-]+(@[A-Za-z0-9_.+-]+)?(#?[A-Za-z0-9_./:@+-]+)?")
_UENV_IMAGE = re.compile(r"[A-Za-z0-9_./:@,+-]+")
_UENV_VIEW = re.compile(r"[A-Za-z0-9_.:,+-]+")
_EDF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
_BIND_OPTS = ("ro", "rw")


def _check_path(key: str, value: str, what: str = "an absolute path") -> None:
    """An absolute path without whitespace, ':' or ',' (separators of bind lists); $NAME expands."""
    if not _ABS_PATH.fullmatch(value) and not re.fullmatch(r"\$\{?[A-Za-z_][^\s:,]*", value):
        raise Invalid(key, f"expected {what} (no spaces, ':' or ','; $NAME allowed), got {value!r}")
    check_expandable(key, value)


def _check_binds(key: str, binds: list[str]) -> None:
    """``src[:dst[:ro|rw]]`` with absolute paths."""
    for i, bind in enumerate(binds):
        parts = bind.split(":")
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in _BIND_OPTS):
            raise Invalid(f"{key}[{i}]", f"expected src[:dst[:ro|rw]] with absolute paths, got {bind!r}")
        for part in parts[:2]:
            _check_path(f"{key}[{i}]", part, "src[:dst[:ro|rw]] with absolute paths")


def _check_image(key: str, image: str, uri: re.Pattern, example: str) -> None:
    if image.startswith(("/", "$")):
        _check_path(key, image)
    elif not uri.fullmatch(image):
        raise Invalid(key, f"expected an image such as {example} or an absolute path, got {image!r}")


class _Wrapper:
    """What every wrapper answers: words before the python command (``prefix``), options for
    srun (``srun_options``), and whether the ranks' python is the container's (``in_container``)."""

    in_container = False

    def prefix(self, gpu_vendor: str | None) -> list[str]:
        """``gpu_vendor``: the job's GPUs' vendor, None without GPUs."""
        return []

    def srun_options(self) -> list[str]:
        return []


@dataclass
class NoWrapper(_Wrapper):
    """The ranks run ``PYTHON -u -m submitit.core._submit`` directly (also: drop a profile's wrapper)."""

    kind: Literal["none"] = "none"


@dataclass
class Apptainer(_Wrapper):
    """``apptainer exec|run [--nv|--rocm] [--bind a,b] [options] IMAGE PYTHON ...`` inside srun;
    ``gpu`` is a choice (``auto``: --nv or --rocm by the nodes' GPU vendor, or none)."""

    image: str
    kind: Literal["apptainer"] = "apptainer"
    binds: list[str] = field(default_factory=list)
    gpu: Literal["auto", "nv", "rocm", "none"] = "auto"
    executable: Literal["apptainer", "singularity"] = "apptainer"
    options: list[str] = field(default_factory=list)
    # exec runs PYTHON in the image; run starts the image's runscript with PYTHON ... as its
    # arguments (images whose runscript sets up the environment, then execs "$@").
    command: Literal["exec", "run"] = "exec"
    in_container = True

    def __post_init__(self):
        _check_image("image", self.image, _IMAGE_URI, "docker://nvcr.io/nvidia/pytorch:24.05-py3")
        _check_binds("binds", self.binds)
        _check_options("options", self.options, _SRUN_VALUE,
                       {"bind": "launch.wrapper.binds", "nv": "launch.wrapper.gpu", "rocm": "launch.wrapper.gpu"},
                       "an apptainer exec")

    def prefix(self, gpu_vendor: str | None) -> list[str]:
        """``gpu_vendor``: the job's GPUs' vendor, None without GPUs (for ``gpu: auto``)."""
        gpu = self.gpu
        if gpu == "auto":
            gpu = {"nvidia": "nv", "amd": "rocm"}.get(gpu_vendor or "", "none")
        words = [self.executable, self.command] + ([f"--{gpu}"] if gpu != "none" else [])
        if self.binds:
            words += ["--bind", ",".join(self.binds)]
        return words + list(self.options) + [self.image]


@dataclass
class Pyxis(_Wrapper):
    """NVIDIA pyxis/enroot: ``srun --container-image=... --container-mounts=...``."""

    image: str
    kind: Literal["pyxis"] = "pyxis"
    mounts: list[str] = field(default_factory=list)
    workdir: str | None = None
    options: list[str] = field(default_factory=list)
    in_container = True

    def __post_init__(self):
        _check_image("image", self.image, _PYXIS_IMAGE, "nvcr.io#nvidia/pytorch:24.05-py3")
        _check_binds("mounts", self.mounts)
        if self.workdir is not None:
            _check_path("workdir", self.workdir)
        for i, option in enumerate(self.options):
            if not re.match(r"--(no-)?container-", option):
                raise Invalid(f"options[{i}]", f"expected a pyxis option (--container-... or "
                                               f"--no-container-...), got {option!r}")
        _check_options("options", self.options, _SRUN_VALUE,
                       {"container-image": "launch.wrapper.image", "container-mounts": "launch.wrapper.mounts",
                        "container-workdir": "launch.wrapper.workdir"}, "a pyxis srun")

    def srun_options(self) -> list[str]:
        options = [f"--container-image={self.image}"]
        if self.mounts:
            options.append(f"--container-mounts={','.join(self.mounts)}")
        if self.workdir:
            options.append(f"--container-workdir={self.workdir}")
        return options + list(self.options)


@dataclass
class Uenv(_Wrapper):
    """CSCS user environments: ``srun --uenv=IMAGE [--view=VIEW]``."""

    image: str
    kind: Literal["uenv"] = "uenv"
    view: str | None = None
    in_container = True

    def __post_init__(self):
        if not _UENV_IMAGE.fullmatch(self.image):
            raise Invalid("image", f"expected a uenv such as prgenv-gnu/24.11:v1 or an absolute "
                                   f"squashfs path, got {self.image!r}")
        if self.view is not None and not _UENV_VIEW.fullmatch(self.view):
            raise Invalid("view", f"expected a view name such as default or prgenv-gnu:modules, got {self.view!r}")

    def srun_options(self) -> list[str]:
        return [f"--uenv={self.image}"] + ([f"--view={self.view}"] if self.view else [])


@dataclass
class Edf(_Wrapper):
    """CSCS container engine: ``srun --environment=NAME`` (a name or an absolute .toml path)."""

    environment: str
    kind: Literal["edf"] = "edf"
    in_container = True

    def __post_init__(self):
        if self.environment.startswith("/"):
            if not self.environment.endswith(".toml"):
                raise Invalid("environment", f"expected an absolute path to a .toml file, got {self.environment!r}")
            _check_path("environment", self.environment, "an absolute path to a .toml file")
        elif not _EDF_NAME.fullmatch(self.environment):
            raise Invalid("environment", f"expected an environment name such as pytorch or an absolute "
                                         f".toml path, got {self.environment!r}")

    def srun_options(self) -> list[str]:
        return [f"--environment={self.environment}"]


@dataclass
class Command(_Wrapper):
    """Any program that runs the rest of its argv: ``ARGV... PYTHON -u -m submitit.core._submit``."""

    argv: list[str]
    kind: Literal["command"] = "command"

    def __post_init__(self):
        if not self.argv:
            raise Invalid("argv", "expected at least the program to run")
        if self.argv[0].startswith("-") or not self.argv[0]:
            raise Invalid("argv[0]", f"expected a program, got {self.argv[0]!r}")
        for i, word in enumerate(self.argv):
            check_expandable(f"argv[{i}]", word)

    def prefix(self, gpu_vendor: str | None) -> list[str]:
        return list(self.argv)


# Tagged on `kind` (see hpcorch.spec.schema: a union of dataclasses that all have a Literal
# `kind` is chosen by that key, so errors name the right variant's keys).
Wrapper = NoWrapper | Apptainer | Pyxis | Uenv | Edf | Command
# The Python on compute nodes: an absolute path of plain characters (it reaches submitit's
# command), or a bare name (python3, python3.11) looked up on PATH where the ranks run: the
# image's, or the one an activation step sets.
_PYTHON = re.compile(r"/[A-Za-z0-9_./+@-]+|python[0-9.]*")
_ACTIVATE = re.compile(r"/[A-Za-z0-9_./+@-]+|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?[A-Za-z0-9_./+@-]*")
_CONDA_ENV = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}|/[A-Za-z0-9_./+@-]+")


@dataclass
class Launch:
    """``launch:`` of a profile or a job; a job's keys win over its profile's, key by key
    (``srun_options`` option by option)."""

    python: str | None = None
    wrapper: Wrapper | None = None
    srun_options: list[str] = field(default_factory=list)
    # Sourced where the ranks run (inside the container) before the interpreter starts: a venv's
    # bin/activate, or conda's etc/profile.d/conda.sh with conda_env (then `conda activate ENV`).
    activate: str | None = None
    conda_env: str | None = None

    def __post_init__(self):
        if self.python is not None and not _PYTHON.fullmatch(self.python):
            raise Invalid("python", f"expected an absolute path such as /sw/venvs/torch/bin/python "
                                    f"(letters, digits, _./+@-) or a name on PATH such as python3, "
                                    f"got {self.python!r}")
        if self.activate is not None and not _ACTIVATE.fullmatch(self.activate):
            raise Invalid("activate", f"expected the absolute path of a script to source, such as "
                                      f"/opt/venv/bin/activate, got {self.activate!r}")
        if self.conda_env is not None:
            if not _CONDA_ENV.fullmatch(self.conda_env):
                raise Invalid("conda_env", f"expected a conda environment name or path, got {self.conda_env!r}")
            if self.activate is None:
                raise Invalid("conda_env", "expected activate too: conda's hook script, such as "
                                           "/opt/conda/etc/profile.d/conda.sh")
        _check_options("srun_options", self.srun_options, _SRUN_VALUE, SRUN_OWNED, "an srun", SRUN_ACTIONS)

    def activation(self) -> list[str]:
        """Words between the wrapper's and the interpreter: ``bash -c '. SCRIPT [&& conda activate
        ENV] && exec "$@"' activate``, so the rest of the argv runs in the activated environment.
        Written in the expansion grammar (``$$`` is a literal ``$``; $NAME in the path expands)."""
        if self.activate is None:
            return []
        steps = f". {self.activate}" + (f" && conda activate {self.conda_env}" if self.conda_env else "")
        return ["bash", "-c", f'{steps} && exec "$$@"', "activate"]
