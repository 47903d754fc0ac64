"""Run manifests, the writing half: what exactly ran in each attempt of a run.

A submission records where it was made from (:func:`record_submission`: the code directory, the
rendered script's and the profile's hashes) in ``RUN/manifests/submission.json``; then global
rank 0's task writes ``RUN/manifests/attempt-N.json`` once per attempt, as the attempt starts
(:func:`write_attempt`): the code directory's git commit and a patch of its staged, unstaged and
untracked changes (``attempt-N.patch``, capped, its sha256 recorded), the installed packages,
Python/torch/CUDA/NCCL versions, the GPU model and driver when NVML answers, Slurm's version, the
hashes of the script, the resolved job and the profile, the node list, node count, world size
and topology address.

N counts the run directory's attempts (0, 1, ...) across requeues *and* resumes, so a resumed
job (a new Slurm job whose restart count starts at 0 again) never overwrites the first attempt;
the Slurm job id and ``SLURM_RESTART_COUNT`` are recorded inside.

Nothing here imports torch: versions come from package metadata, so the manifest costs the
training process no import time, and git's share is capped (:data:`hpcorch.batch.gitstate.GIT_BUDGET_S`).
The reading half (what changed between attempts, ``hpcorch manifest``) is
:mod:`hpcorch.observe.manifest`.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import sys
import time
from pathlib import Path

from hpcorch.batch.gitstate import git_state, sha256
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import atomic_write, read_json

log = logging.getLogger(__name__)

ENV_PREFIXES = ("NCCL_", "CUDA_", "TORCH_", "SLURM_TOPOLOGY_")



# ----- writing -----------------------------------------------------------------------------------
def record_submission(run: RunDir, code_dir: str | os.PathLike, script: str | None, profile: dict) -> None:
    """At submit time: where the job was submitted from (its code directory) and the hashes of
    the rendered script and of the resolved profile, for every attempt's manifest to copy."""
    run.manifests.mkdir(parents=True, exist_ok=True)
    from hpcorch import __version__

    # hpcorch_version: the planner's, which the pre-flight compares with the one where ranks run.
    record = {"code_dir": str(Path(code_dir).absolute()), "time": time.time(), "hpcorch_version": __version__,
              "script_sha256": sha256(script) if script is not None else None,
              "profile": profile.get("name"),
              "profile_sha256": sha256(json.dumps(profile, sort_keys=True, default=str))}
    atomic_write(run.manifest_file(None), json.dumps(record, indent=1))


def write_attempt(run: RunDir, job_id: str, scheduler: str, code_dir: str | os.PathLike | None = None) -> Path | None:
    """Write this attempt's manifest (and patch); returns its path. Never raises: a manifest that
    cannot be written costs a warning, not the attempt."""
    try:
        submission = read_json(run.manifest_file(None))
        code = Path(code_dir or submission.get("code_dir") or os.getcwd())
        attempt = next_attempt(run)
        data, patch = collect(run, code, job_id, scheduler, submission)
        data["attempt"] = attempt
        run.manifests.mkdir(parents=True, exist_ok=True)
        if patch:
            atomic_write(run.manifest_file(attempt, "patch"), patch, durable=False)
        path = run.manifest_file(attempt)
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True))
        log.info("hpcorch: manifest of attempt %d written to %s", attempt, path)
        return path
    except Exception as exc:  # noqa: BLE001 - book-keeping must never stop training
        log.warning("hpcorch: no manifest for this attempt: %s", exc)
        return None


def next_attempt(run: RunDir) -> int:
    return len(attempt_numbers(run))


def collect(run: RunDir, code_dir: Path, job_id: str, scheduler: str, submission: dict) -> tuple[dict, bytes]:
    """The manifest of this attempt as a dict, and the code patch (bytes, maybe empty)."""
    started = time.monotonic()
    git, patch = git_state(code_dir, exclude=(run.root, run.checkpoints))
    job_text = run.job_file.read_bytes() if run.job_file.exists() else b""
    env = os.environ
    data = {
        "time": time.time(), "job_id": str(job_id), "scheduler": scheduler,
        "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        "host": env.get("SLURMD_NODENAME") or socket.gethostname(),
        "nodes": env.get("SLURM_JOB_NODELIST") or socket.gethostname(),
        # this attempt's size: a node range gets another world size each attempt
        "node_count": int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1),
        "world_size": int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1),
        "topology_addr": env.get("SLURM_TOPOLOGY_ADDR"),
        "code_dir": str(code_dir), "git": git,
        "python": platform.python_version(), "python_executable": sys.executable, "platform": platform.platform(),
        "versions": versions(), "gpu": gpu_info(), "packages": packages(),
        "script_sha256": submission.get("script_sha256"), "profile": submission.get("profile"),
        "profile_sha256": submission.get("profile_sha256"),
        "job_sha256": sha256(job_text) if job_text else None,
        "environment": {k: v for k, v in sorted(env.items()) if k.startswith(ENV_PREFIXES)},
    }
    data["collect_s"] = round(time.monotonic() - started, 3)
    return data, patch


# ----- the environment ---------------------------------------------------------------------------
def packages() -> dict[str, str]:
    """Every installed distribution and its version (importlib.metadata, no imports)."""
    from importlib import metadata

    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower().replace("_", "-")] = dist.version
    return dict(sorted(found.items()))


def versions() -> dict:
    """torch, its CUDA build, NCCL, hpcorch and Slurm, read without importing torch: torch's
    CUDA version from its ``version.py``, NCCL from the loaded torch when there is one, else the
    NCCL wheel torch depends on."""
    from importlib import metadata

    from hpcorch import __version__

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    nccl = None
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "cuda", None) is not None and torch.cuda.is_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    return {"torch": dist("torch"), "cuda": _torch_cuda(),
            "nccl": nccl or dist("nvidia-nccl-cu12") or dist("nvidia-nccl-cu13") or dist("nvidia-nccl-cu11"),
            "hpcorch": __version__, "slurm": _slurm_version()}


def _torch_cuda() -> str | None:
    """``torch.version.cuda`` read from the file (importing it would import torch)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return None
    found = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return found.group(1) if found else None


def _slurm_version() -> str | None:
    """``sinfo --version`` (``slurm 24.05.4``) where Slurm is installed."""
    from hpcorch.cluster.slurm import Slurm

    return Slurm().version()


def _text(value):
    """NVML answers bytes in older pynvml releases, str in newer ones."""
    return value.decode() if isinstance(value, bytes) else value


def gpu_info() -> dict | None:
    """GPU model, count and driver through NVML (nvidia-ml-py), when it is installed and finds a
    GPU; None otherwise (no nvidia-smi subprocess: it can hang on a sick node)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU: nothing to record
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)) if count else None
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"model": _text(name), "count": count, "driver": _text(driver)}
    finally:
        pynvml.nvmlShutdown()


# ----- the attempts written ---------------------------------------------------------------------
def attempt_numbers(run: RunDir) -> list[int]:
    """The attempts with a manifest, in order."""
    found = []
    for path in run.manifests.glob("attempt-*.json"):
        number = path.stem.removeprefix("attempt-")
        if number.isdigit():
            found.append(int(number))
    return sorted(found)
