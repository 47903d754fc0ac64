"""Run manifests: what exactly ran in each attempt of a run, and what changed between attempts.

A submission records where it was made from (:func:`record_submission`: the code directory, the
rendered script's and the profile's hashes) in ``RUN/manifests/submission.json``; then global
rank 0's task writes ``RUN/manifests/attempt-N.json`` once per attempt, as the attempt starts
(:func:`write_attempt`): the code directory's git commit and a patch of its staged, unstaged and
untracked changes (``attempt-N.patch``, capped, its sha256 recorded), the installed packages,
Python/torch/CUDA/NCCL versions, the GPU model and driver when NVML answers, Slurm's version, the
hashes of the script, the resolved job and the profile, the node list and topology address.

N counts the run directory's attempts (0, 1, ...) across requeues *and* resumes, so a resumed
job (a new Slurm job whose restart count starts at 0 again) never overwrites the first attempt;
the Slurm job id and ``SLURM_RESTART_COUNT`` are recorded inside.

Nothing here imports torch: versions come from package metadata, so the manifest costs the
training process no import time, and git's share is capped (:data:`hpcorch.gitstate.GIT_BUDGET_S`).
:func:`differences` is what ``hpcorch status`` warns about.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .gitstate import git_state, sha256
from .fileio import atomic_write, read_json
from .rundir import RunDir

if TYPE_CHECKING:
    from .registry import Entry

log = logging.getLogger(__name__)

ENV_PREFIXES = ("NCCL_", "CUDA_", "TORCH_", "SLURM_TOPOLOGY_")
# What differs between attempts that may change the result (node lists and times do not).
COMPARED = {"code": ("git.commit", "git.patch_sha256"),
            "versions": ("python", "versions.torch", "versions.cuda", "versions.nccl", "gpu.driver", "gpu.model",
                         "versions.slurm", "versions.hpcorch"),
            "inputs": ("script_sha256", "job_sha256", "profile_sha256")}


# ----- writing -----------------------------------------------------------------------------------
def record_submission(run: RunDir, code_dir: str | os.PathLike, script: str | None, profile: dict) -> None:
    """At submit time: where the job was submitted from (its code directory) and the hashes of
    the rendered script and of the resolved profile, for every attempt's manifest to copy."""
    run.manifests.mkdir(parents=True, exist_ok=True)
    record = {"code_dir": str(Path(code_dir).absolute()), "time": time.time(),
              "script_sha256": sha256(script) if script is not None else None,
              "profile": profile.get("name"), "profile_sha256": sha256(json.dumps(profile, sort_keys=True, default=str))}
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

    from . import __version__

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
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, timeout=1.0).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip().removeprefix("slurm ").strip() or None


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
        as_text = (lambda v: v.decode() if isinstance(v, bytes) else v)
        return {"model": as_text(name), "count": count, "driver": as_text(driver)}
    finally:
        pynvml.nvmlShutdown()


# ----- reading and comparing ---------------------------------------------------------------------
def attempt_numbers(run: RunDir) -> list[int]:
    """The attempts with a manifest, in order."""
    found = []
    for path in run.manifests.glob("attempt-*.json"):
        number = path.stem.removeprefix("attempt-")
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def load(run: RunDir, attempt: int) -> dict:
    data = read_json(run.manifest_file(attempt))
    if not data:
        have = attempt_numbers(run)
        from .errors import HpcorchError

        raise HpcorchError(f"no manifest of attempt {attempt} in {run.manifests} "
                           f"({'attempts: ' + ', '.join(map(str, have)) if have else 'none written yet'})")
    return data


def patch_of(run: RunDir, attempt: int) -> bytes:
    try:
        return run.manifest_file(attempt, "patch").read_bytes()
    except OSError:
        return b""


def _get(data: dict, dotted: str):
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _short(value) -> str:
    text = str(value)
    return text[:12] if re.fullmatch(r"[0-9a-f]{40,64}", text) else text


def package_changes(a: dict, b: dict) -> list[str]:
    """``numpy 1.26.4 -> 2.0.1``, ``+wandb 0.31.0``, ``-tensorboardx 2.6.5`` between two package maps."""
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"-{name} {a[name]}")
        elif name not in a:
            out.append(f"+{name} {b[name]}")
        elif a[name] != b[name]:
            out.append(f"{name} {a[name]} -> {b[name]}")
    return out


def file_patches(patch: bytes) -> dict[str, bytes]:
    """A patch split per file: {path: that file's part}."""
    parts: dict[str, bytes] = {}
    name = None
    for line in patch.splitlines(keepends=True):
        if line.startswith(b"diff --git a/"):
            name = line[len(b"diff --git a/"):].split(b" b/", 1)[0].decode(errors="replace")
            parts[name] = b""
        if name is not None:
            parts[name] += line
    return parts


def changed_files(patch_a: bytes, patch_b: bytes) -> list[str]:
    """Files whose uncommitted changes differ between two attempts' patches."""
    a, b = file_patches(patch_a), file_patches(patch_b)
    return sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))


def compare(a: dict, b: dict, patch_a: bytes = b"", patch_b: bytes = b"") -> list[str]:
    """What differs between manifests ``a`` and ``b`` in what may change the result: the code
    (commit, uncommitted changes), the packages, the versions, the script, job and profile."""
    out = []
    if _get(a, "git.commit") != _get(b, "git.commit"):
        out.append(f"code: commit {_short(_get(a, 'git.commit'))} -> {_short(_get(b, 'git.commit'))}")
    if _get(a, "git.patch_sha256") != _get(b, "git.patch_sha256"):
        files = changed_files(patch_a, patch_b)
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        out.append(f"code: uncommitted changes differ ({shown or 'patch ' + str(_short(_get(b, 'git.patch_sha256')))})")
    if _get(a, "git.incomplete") or _get(b, "git.incomplete"):
        out.append("code: not comparable (" + (_get(a, "git.incomplete") or _get(b, "git.incomplete")) + ")")
    pkgs = package_changes(a.get("packages") or {}, b.get("packages") or {})
    if pkgs:
        out.append(f"packages: {', '.join(pkgs[:6])}" + (f" and {len(pkgs) - 6} more" if len(pkgs) > 6 else ""))
    for group in ("versions", "inputs"):
        for key in COMPARED[group]:
            if _get(a, key) != _get(b, key):
                out.append(f"{group}: {key} {_short(_get(a, key))} -> {_short(_get(b, key))}")
    return out


def differences(run: RunDir) -> list[str]:
    """One line per later attempt that differs from the first in what matters (see :func:`compare`)."""
    numbers = attempt_numbers(run)
    if len(numbers) < 2:
        return []
    first = read_json(run.manifest_file(numbers[0]))
    out = []
    for n in numbers[1:]:
        later = read_json(run.manifest_file(n))
        changes = compare(first, later, patch_of(run, numbers[0]), patch_of(run, n)) if later and first else []
        if changes:
            out.append(f"attempt {n} (job {later.get('job_id')}) differs from attempt {numbers[0]}: "
                       + "; ".join(changes) + f" (hpcorch manifest REF --diff {numbers[0]} {n})")
    return out


def code_diff(patch_a: bytes, patch_b: bytes, a: int, b: int, max_lines: int = 400) -> list[str]:
    """How the uncommitted changes of attempt ``b`` differ from attempt ``a``'s, file by file:
    a file changed in one attempt only shows that attempt's patch of it; a file changed in both,
    a diff of the two patches."""
    import difflib

    pa, pb = file_patches(patch_a), file_patches(patch_b)
    out: list[str] = []
    for name in changed_files(patch_a, patch_b):
        if name not in pa:
            out.append(f"== {name}: changed in attempt {b}, not in attempt {a}:")
            out += pb[name].decode(errors="replace").splitlines()
        elif name not in pb:
            out.append(f"== {name}: changed in attempt {a}, as committed in attempt {b}:")
            out += pa[name].decode(errors="replace").splitlines()
        else:
            out.append(f"== {name}: changed in both attempts; their patches differ:")
            out += list(difflib.unified_diff(pa[name].decode(errors="replace").splitlines(),
                                             pb[name].decode(errors="replace").splitlines(),
                                             f"attempt {a}", f"attempt {b}", lineterm=""))
    if len(out) > max_lines:
        out = out[:max_lines] + [f"... {len(out) - max_lines} more lines (see the .patch files in manifests/)"]
    return out


def field_changes(a: dict, b: dict) -> list[str]:
    """Every top-level or nested field that differs, except packages (listed by
    :func:`package_changes`) and the moments and durations that always differ."""
    skip = {"time", "collect_s", "attempt", "packages"}

    def walk(x, y, prefix: str):
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                if not prefix and key in skip:
                    continue
                yield from walk(x.get(key), y.get(key), f"{prefix}{key}.")
        elif x != y:
            yield f"{prefix.rstrip('.')}: {_short(x)} -> {_short(y)}"

    return list(walk(a, b, ""))


# ----- the service functions behind `hpcorch manifest` ------------------------------------------
def resolve(ref: str, registry=None) -> tuple[RunDir, Entry | None]:
    """The run directory of ``ref`` (a run directory path, or a job in the registry; a remote
    job: its copy from ``hpcorch pull``) and its registry entry (None for a path)."""
    from .errors import HpcorchError

    if Path(ref).is_dir() and (Path(ref) / "job.yaml").exists():
        return RunDir.open(ref), None
    from .registry import Registry

    entry = (registry or Registry()).get(ref)
    if not entry.remote:
        return RunDir.open(entry.run_dir), entry
    from .remote.ops import pulled_dir

    pulled = pulled_dir(entry)
    if not pulled.is_dir():
        raise HpcorchError(f"job {entry.job_id} (hpcorch #{entry.key}) ran on {entry.remote_ref.host}: "
                           f"fetch its run directory first with `hpcorch pull {entry.key}`")
    return RunDir.open(pulled), entry


def run_of(ref: str, registry=None) -> RunDir:
    """The run directory of ``ref``, as :func:`resolve` finds it."""
    return resolve(ref, registry)[0]


def manifests(ref: str | RunDir, registry=None) -> list[dict]:
    """Every attempt's manifest of job ``ref`` (or of a run directory already found), in order."""
    run = ref if isinstance(ref, RunDir) else run_of(ref, registry)
    return [load(run, n) for n in attempt_numbers(run)]


def diff(ref: str, a: int, b: int, registry=None) -> dict:
    """Attempts ``a`` and ``b`` of job ``ref`` side by side: what matters (``changes``), every
    other field that differs, the package changes and the code diff."""
    run = run_of(ref, registry)
    ma, mb = load(run, a), load(run, b)
    pa, pb = patch_of(run, a), patch_of(run, b)
    return {"a": a, "b": b, "changes": compare(ma, mb, pa, pb), "fields": field_changes(ma, mb),
            "packages": package_changes(ma.get("packages") or {}, mb.get("packages") or {}),
            "code": code_diff(pa, pb, a, b)}
