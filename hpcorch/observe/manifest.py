"""Run manifests, the reading half: what changed between the attempts of a run.

:mod:`hpcorch.batch.manifest` writes ``RUN/manifests/attempt-N.json`` (and its patch) as each
attempt starts; this module loads them, compares two attempts (what may change the result: code,
versions, inputs) and shows the differences. :func:`differences` is what ``hpcorch status`` warns
about; :func:`manifests` and :func:`diff` are what ``hpcorch manifest`` shows.
"""
from __future__ import annotations

import re

from hpcorch.batch.manifest import attempt_numbers
from hpcorch.state.registry import run_of
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import read_json

# What differs between attempts that may change the result (node lists and times do not).
COMPARED = {"code": ("git.commit", "git.patch_sha256"),
            "versions": ("python", "versions.torch", "versions.cuda", "versions.nccl", "gpu.driver", "gpu.model",
                         "versions.slurm", "versions.hpcorch"),
            "inputs": ("script_sha256", "job_sha256", "profile_sha256")}


def load(run: RunDir, attempt: int) -> dict:
    data = read_json(run.manifest_file(attempt))
    if not data:
        have = attempt_numbers(run)
        from hpcorch.errors import HpcorchError

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


def attempt_sizes(run: RunDir) -> list[dict]:
    """Each attempt's size as its manifest recorded it, in order: ``attempt``, ``time`` (when it
    started), ``world_size``, ``node_count`` and ``nodes`` (None where an older manifest has none)."""
    out = []
    for n in attempt_numbers(run):
        m = read_json(run.manifest_file(n)) or {}
        out.append({"attempt": n, "time": m.get("time"), "world_size": m.get("world_size"),
                    "node_count": m.get("node_count"), "nodes": m.get("nodes")})
    return out


def sizes_text(sizes: list[dict], shown: int = 4) -> str | None:
    """``hpcorch status``'s line: ``attempt 0: 4 ranks on node[1-4]; attempt 1: 2 ranks on
    node[1-2]`` (the last ``shown`` attempts), or ``2 ranks on node[1-2], every attempt``."""
    known = [s for s in sizes if s.get("world_size") is not None]
    if not known:
        return None
    phrase = [f"{s['world_size']} rank{'s' if s['world_size'] != 1 else ''} on {s.get('nodes')}" for s in known]
    if len(set(phrase)) == 1:
        return phrase[0] + (f", every attempt ({len(known)})" if len(known) > 1 else "")
    parts = [f"attempt {s['attempt']}: {p}" for s, p in zip(known, phrase, strict=True)][-shown:]
    return ("..., " if len(known) > shown else "") + "; ".join(parts)


# ----- what `hpcorch manifest` shows -------------------------------------------------------------
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
