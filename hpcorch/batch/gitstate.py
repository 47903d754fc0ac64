"""The state of a code directory's git repository, for run manifests: commit, branch, origin,
and a patch of staged, unstaged *and untracked* changes (the part other tools forget), under a
time budget and a size cap so that a big or slow repository never holds up training."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hpcorch.state.rundir import RunDir

GIT_BUDGET_S = 1.0          # all git commands of one manifest together
MAX_PATCH_BYTES = 10 << 20  # larger patches are cut there (marked, and hashed as written)
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's id of the empty tree


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass
class _Git:
    """git commands in one folder sharing one deadline."""

    cwd: Path
    deadline: float

    def __call__(self, *args: str) -> bytes | None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            done = subprocess.run(["git", "-c", "core.quotepath=off", *args], cwd=self.cwd, capture_output=True,
                                  timeout=left, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        except subprocess.TimeoutExpired:
            raise TimeoutError from None
        return done.stdout if done.returncode == 0 else None


def git_state(code_dir: Path, exclude=(), budget_s: float = GIT_BUDGET_S,
              max_patch: int = MAX_PATCH_BYTES) -> tuple[dict, bytes]:
    """(git facts, patch) of the repository holding ``code_dir``: commit, branch, origin URL
    (without credentials), dirty flag and a patch of staged + unstaged + untracked changes
    against HEAD. Folders in ``exclude`` (the run directory, when it lies inside the repository)
    are left out. ``{"repo": None}`` outside a repository (or without git)."""
    if shutil.which("git") is None or not Path(code_dir).is_dir():
        return {"repo": None}, b""
    git = _Git(Path(code_dir), time.monotonic() + budget_s)
    try:
        top = git("rev-parse", "--show-toplevel")
        if top is None:
            return {"repo": None}, b""
        git.cwd = Path(os.fsdecode(top.strip()))  # a file name is bytes: not every one is UTF-8
        head = git("rev-parse", "--verify", "-q", "HEAD")
        commit = head.decode().strip() if head else None
        branch = (git("rev-parse", "--abbrev-ref", "HEAD") or b"").decode().strip() or None
        branch = None if branch == "HEAD" else branch  # a detached HEAD (CI checkouts) is on no branch
        origin = (git("config", "--get", "remote.origin.url") or b"").decode().strip() or None
        skip = [f":(exclude){os.path.relpath(p, git.cwd)}" for p in map(Path, exclude)
                if _inside(p, git.cwd) and Path(p).resolve() != git.cwd.resolve()]
        # Against the empty tree before the first commit: everything tracked is "changed".
        base = commit or EMPTY_TREE
        patch = git("diff", "--binary", base, "--", ".", *skip) or b""
        untracked = (git("ls-files", "-z", "--others", "--exclude-standard", "--", ".", *skip) or b"").split(b"\0")
        patch, truncated = _with_untracked(git.cwd, patch, [os.fsdecode(u) for u in untracked if u], max_patch)
    except TimeoutError:
        return {"repo": str(code_dir), "incomplete": f"git took longer than {budget_s:g} s"}, b""
    return {"repo": str(git.cwd), "commit": commit, "branch": branch, "origin": _without_credentials(origin),
            "dirty": bool(patch), "patch_bytes": len(patch), "patch_sha256": sha256(patch) if patch else None,
            "patch_truncated": truncated, "untracked": len([u for u in untracked if u])}, patch


def _inside(path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _without_credentials(url: str | None) -> str | None:
    """``https://user:token@host/x`` -> ``https://host/x``: a manifest is no place for a token."""
    return re.sub(r"^([a-z+]+://)[^/@]*@", r"\1", url) if url else url


def _with_untracked(top: Path, patch: bytes, names: list[str], limit: int) -> tuple[bytes, bool]:
    """``patch`` followed by a "new file" patch of each untracked file (``git apply`` takes it),
    cut at ``limit`` bytes; returns (patch, whether anything was left out). Reading is bounded
    by the same limit: a binary file, or one that would pass it, is named with its size and
    modification time (enough to see it change), never read whole. Untracked hpcorch run
    directories (other runs under ``runs/``) are no code: they are left out."""
    parts = [patch]
    size, cut = len(patch), False
    runs: dict[Path, bool] = {}
    for name in sorted(names):
        if size > limit:
            cut = True
            break
        if _in_run_dir(top, name, runs):
            continue
        try:
            data, stamp = _read_text(top / name, limit - size)
        except OSError:
            continue
        cut |= data is None and stamp.startswith("too large")
        part = _new_file_patch(name, data, stamp)
        parts.append(part)
        size += len(part)
    joined = b"".join(parts)
    if len(joined) <= limit:
        return joined, cut
    return joined[:limit] + b"\n# hpcorch: patch cut at %d bytes\n" % limit, True


def _in_run_dir(top: Path, name: str, seen: dict[Path, bool]) -> bool:
    """Whether ``name`` lies in a folder holding an hpcorch run (its ``job.yaml`` beside its
    ``events.jsonl``); ``seen`` remembers each folder's answer."""
    for parent in Path(name).parents:
        if parent == Path("."):
            return False
        if parent not in seen:
            folder = top / parent
            seen[parent] = RunDir.looks_like_run(folder, started=True)
        if seen[parent]:
            return True
    return False


def _read_text(path: Path, room: int) -> tuple[bytes | None, str]:
    """A text file's bytes if it fits in ``room``; else None and what identifies it."""
    st = path.stat()
    stamp = f"{st.st_size} bytes, mtime {st.st_mtime_ns}"
    if st.st_size > room:
        return None, f"too large: {stamp}"
    with open(path, "rb") as f:
        head = f.read(8192)
        if b"\0" in head:
            return None, f"binary: {stamp}"
        return head + f.read(), stamp


def _new_file_patch(name: str, data: bytes | None, stamp: str = "") -> bytes:
    raw = os.fsencode(name)  # the name's own bytes back (git apply matches them), UTF-8 or not
    head = b"diff --git a/%s b/%s\nnew file mode 100644\n" % (raw, raw)
    if data is None:
        return head + b"Binary files /dev/null and b/%s differ (%s)\n" % (raw, stamp.encode())
    if not data:
        return head
    lines = data.split(b"\n")
    ends_with_newline = lines[-1] == b""
    if ends_with_newline:
        lines = lines[:-1]
    body = b"".join(b"+" + line + b"\n" for line in lines)
    if not ends_with_newline:
        body += b"\\ No newline at end of file\n"
    return head + b"--- /dev/null\n+++ b/%s\n@@ -0,0 +1,%d @@\n" % (raw, len(lines)) + body
