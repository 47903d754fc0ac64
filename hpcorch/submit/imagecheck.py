"""Before submitting: does hpcorch, of a compatible version, import where the ranks will run
(inside the container or user environment, after the activation step)? One line either way.

The probe runs the ranks' own launch: on a Slurm profile one task through ``srun`` with the
job's partition, account, QOS and every srun option (the wrapper's first), so pyxis, uenv and
edf are checked as they will run; an apptainer image is probed on this machine when apptainer
is here (no queue wait); the local profile probes here.
"""
from __future__ import annotations

import shutil
import subprocess

from hpcorch.errors import HpcorchError

PROBE = "import hpcorch, submitit; print('hpcorch-version', hpcorch.__version__)"
CHECK_MINUTES = 5


def probe_command(plan, env: dict) -> tuple[list[str], str]:
    """The argv of the probe and where it runs ("on this machine" or "on a compute node")."""
    from hpcorch.spec.expand import expand_with

    launch = plan.launch
    command = [expand_with(word, env) for word in launch.prefix] + [plan.python, "-c", PROBE]
    here = plan.profile.scheduler == "local" or (launch.wrapper == "apptainer" and shutil.which(launch.prefix[0]))
    if here:
        return command, "on this machine"
    options = [f"--partition={plan.partition.name}"] * (not plan.partition.implicit)
    options += [f"--account={plan.account}"] * bool(plan.account) + [f"--qos={plan.qos}"] * bool(plan.qos)
    srun = ["srun", "--nodes=1", "--ntasks=1", f"--time={CHECK_MINUTES}", "--job-name=hpcorch-image-check",
            *options, *[expand_with(o, env) for o in launch.srun_options]]
    return srun + command, "on a compute node"


def check_image(plan, env: dict, ours: str, timeout_s: float = 600) -> str:
    """One line: the hpcorch version that imports where the ranks run, or a HpcorchError
    saying what failed (not importable, another major.minor, the launcher not found)."""
    argv, where = probe_command(plan, env)
    launch = f"{plan.launch.wrapper} wrapper, {plan.python}" if plan.launch.wrapper != "none" else plan.python
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise HpcorchError(f"launch: {argv[0]} not found {where}; cannot check that hpcorch imports "
                           f"where the ranks run ({launch})") from None
    except subprocess.TimeoutExpired:
        raise HpcorchError(f"launch: checking that hpcorch imports where the ranks run ({launch}) took over "
                           f"{timeout_s:.0f} s {where}") from None
    found = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("hpcorch-version ")]
    if proc.returncode or not found:
        said = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise HpcorchError(f"launch: hpcorch does not import where the ranks run ({launch}, {where}): "
                           f"{said[-1] if said else f'exit {proc.returncode}'}; install hpcorch {ours} there, "
                           "or set launch.python / launch.activate")
    if found[-1].split(".")[:2] != ours.split(".")[:2]:
        raise HpcorchError(f"launch: hpcorch {found[-1]} imports where the ranks run ({launch}), but "
                           f"{ours} planned the job; install hpcorch {ours} there")
    return f"hpcorch {found[-1]} imports where the ranks run ({launch}, checked {where})"
