"""Jobs on a login node reached over SSH: submit there, and operate the jobs recorded here as remote.

The login node's own ``hpcorch`` does the work (it plans with its own paths, calls its own
``sbatch``, keeps its own registry); this side syncs what the job needs, runs that ``hpcorch``
over the agent's transport, and records the job locally with a :class:`RemoteRef` to it.
Every command a remote job takes (``status``, ``logs -f``, ``cancel``, ``resume``) is the
same command run there, so ``logs -f`` moves only the bytes the log gains.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hpcorch.errors import ConfigError, HpcorchError, RemoteError
from hpcorch.spec import catalog
from hpcorch.spec.profile import ClusterProfile, load_profile
from hpcorch.state.registry import Entry, Registry, RemoteRef
from hpcorch.util.fileio import number

log = logging.getLogger(__name__)


def wanted(profile: ClusterProfile, remote: bool | None, source: str = "") -> bool:
    """Whether a submission goes over SSH: ``remote`` True (``--remote``) or False (``--here``)
    decides; by default, a profile with ``login:`` on a machine without Slurm's ``sbatch``."""
    if remote is False:
        return False
    if remote is True:
        if profile.login is None:
            raise ConfigError(source or f"profile {profile.name!r}", "login",
                              "expected a login: section (host, user, ...) for --remote")
        return True
    return profile.login is not None and profile.scheduler == "slurm" and shutil.which("sbatch") is None


def login_of(profile_ref: str):
    """The ``login:`` of a profile (name or path); ConfigError naming the file when absent."""
    prof = load_profile(profile_ref)
    if prof.login is None:
        where = profile_ref
        if catalog.is_name(profile_ref):
            where = str(catalog.find("profiles", profile_ref) or profile_ref)
        raise ConfigError(where, "login", "this profile has no login: section (host, user, ...) "
                                          "to reach the cluster over SSH")
    return prof.login


def session(profile_ref: str, accept_new: bool = False):
    """The agent's session to ``profile_ref``'s login node, its hpcorch version checked."""
    from hpcorch.remote.client import Session

    sess = Session.open(login_of(profile_ref), accept_new=accept_new)
    sess.check_version()
    return sess


# ----- submit ------------------------------------------------------------------------------------
def submit(plan, profile_ref: str, code_dir: str | None = None, run_dir: str | None = None,
           template_dir: str | None = None, allow_config_change: bool = False, nccl_debug: str | None = None,
           accept_new: bool = False, check: bool = False, force: bool = False,
           registry: Registry | None = None) -> Entry | str:
    """Submit ``plan``'s job (validated here) on its profile's login node and record it here.
    The resolved job and profile travel as files, with ``code_dir`` (synced incrementally to
    ``WORKDIR/code/NAME``, where the remote submission then runs, so relative paths in the job
    resolve against it) and ``template_dir``. ``run_dir``: a path on the login node. ``check``:
    only ask that cluster whether it would take the job; returns Slurm's answer."""
    from hpcorch.spec.job import job_to_dict
    from hpcorch.spec.schema import to_dict
    from hpcorch.spec.yamlio import dump_yaml

    check_code_dir(plan, code_dir)
    sess = session(profile_ref, accept_new)
    spec_dir = push_spec(sess, plan.job.name, {"job.yaml": dump_yaml(job_to_dict(plan.job)),
                                               "profile.yaml": dump_yaml(to_dict(plan.profile))})
    cwd = push_code(sess, code_dir)
    args = ["submit", f"{spec_dir}/job.yaml", "-p", f"{spec_dir}/profile.yaml", "--here"]
    args += ["--check"] if check else ["--json", "--no-wait"]
    if template_dir is not None:
        remote_templates = f"{sess.workdir}/templates/{Path(template_dir).resolve().name}"
        push(sess, template_dir, remote_templates)
        args += ["--template-dir", remote_templates]
    args += (["--run-dir", run_dir] if run_dir else []) + (["--allow-config-change"] if allow_config_change else [])
    args += ["--nccl-debug", nccl_debug] if nccl_debug else []
    args += ["--force"] if force else []  # the login node re-plans: it must not refuse what --force let through
    out = hpcorch(sess, args, cwd=cwd)
    if check:
        return out.decode(errors="replace").strip()
    info = json_answer(sess, out)
    return _record(info, profile_ref, sess.host, registry, resumed_from=None)


def push_spec(sess, name: str, texts: dict[str, str]) -> str:
    """Write ``texts`` (file name -> text: the resolved job, profile, ...) to a folder of the
    login node named by their digest (the same files land in the same folder); returns it."""
    digest = hashlib.sha256("".join(texts.values()).encode()).hexdigest()[:12]
    spec_dir = f"{sess.workdir}/submit/{name}-{digest}"
    with tempfile.TemporaryDirectory(prefix="hpcorch-submit-") as tmp:
        for file, text in texts.items():
            Path(tmp, file).write_text(text)
        push(sess, tmp, spec_dir)
    return spec_dir


def push_code(sess, code_dir: str | None) -> str:
    """Sync ``code_dir`` (``--code``) to ``WORKDIR/code/NAME``; returns the folder the login node
    submits from (that copy, else the workdir), where relative paths of the job resolve."""
    if code_dir is None:
        return sess.workdir
    cwd = f"{sess.workdir}/code/{Path(code_dir).resolve().name}"
    push(sess, code_dir, cwd)
    return cwd


def check_code_dir(plan, code_dir: str | None) -> None:
    """A ``program:`` job's relative ``code_dir`` resolves in the folder the login node submits
    from: the synced ``--code`` folder, else its bare workdir, where the program cannot be.
    Refused here (one line, before connecting) rather than failing on the allocation."""
    program = plan.job.program
    if program is None or code_dir is not None or os.path.isabs(os.path.expanduser(program.code_dir or "")):
        return
    raise ConfigError(plan.source, "program.code_dir",
                      f"{program.code_dir or '(default: the folder submitted from)'} is relative: a remote "
                      f"program job runs from the --code folder synced to the login node; pass --code DIR "
                      f"(or give an absolute path on the login node)")


def push(sess, local: str | os.PathLike, remote: str):
    """Sync ``local`` to ``remote`` on the login node (a full remote disk: RemoteDiskFull)."""
    from hpcorch.remote.sync import push as sync_push

    stats = sync_push(sess, str(local), remote)
    log.info("synced %s to %s:%s (%s)", local, sess.host, remote, stats)
    return stats


def record_remote(info: dict, profile_ref: str, host: str, registry: Registry | None = None) -> Entry:
    """Register here the login node's job ``info`` (a row of its ``ls --json``: a sweep's point)."""
    return _record(info, profile_ref, host, registry, resumed_from=None)


def _record(info: dict, profile_ref: str, host: str, registry: Registry | None, resumed_from: int | None) -> Entry:
    """Record the job the login node answered ``info`` for, with the profile as any folder
    finds it again (``status``, ``resume`` reconnect through it)."""
    profile_ref = catalog.lasting(str(profile_ref))
    ref = RemoteRef(profile=profile_ref, key=int(info["key"]), host=host)
    return (registry or Registry()).add(
        str(info["job_id"]), info["name"], str(profile_ref), info.get("scheduler", "slurm"), info["run_dir"],
        info.get("job_file", ""), resumed_from=resumed_from, remote=ref)


# ----- one remote hpcorch command ----------------------------------------------------------------
def hpcorch(sess, args: list[str], cwd: str | None = None, on_stdout: Callable[[bytes], None] | None = None):
    """Run ``LOGIN.python -m hpcorch ARGS`` on the login node. Its own one-line errors (exit 2)
    come back as ours, with the host named; stdout is returned (or streamed to ``on_stdout``)."""
    done = sess.run([sess.python, "-m", "hpcorch", *args], cwd=cwd or sess.workdir, on_stdout=on_stdout)
    stderr = done.stderr.decode(errors="replace")
    if done.code != 0:
        lines = [line.removeprefix("error: ") for line in stderr.splitlines() if line.strip()]
        raise RemoteError(f"{sess.host}: {lines[-1] if lines else f'hpcorch {args[0]} exited with {done.code}'}")
    for line in stderr.splitlines():  # warnings and notes of the remote command, as they were
        log.warning("%s: %s", sess.host, line.removeprefix("warning: "))
    return done.stdout


def json_answer(sess, out: bytes) -> dict | list:
    """The login node's ``--json`` answer ``out``; anything else is a one-line RemoteError."""
    try:
        return json.loads(out)
    except ValueError:
        raise RemoteError(f"{sess.host}: hpcorch answered something other than JSON: "
                          f"{out[:200].decode(errors='replace')!r}") from None


# ----- operate jobs recorded as remote -----------------------------------------------------------
def rows(entries: list[Entry]) -> dict[int, dict]:
    """State and goodput of remote jobs, as their login node's ``hpcorch ls --json`` gives
    them (one call per login node). A node that cannot be reached gives ``UNKNOWN (HOST:
    why)`` for its jobs rather than failing the whole list."""
    found: dict[int, dict] = {}
    by_profile: dict[str, list[Entry]] = {}
    for entry in entries:
        by_profile.setdefault(entry.remote_ref.profile, []).append(entry)
    for profile_ref, group in by_profile.items():
        try:
            sess = session(profile_ref)
            listed = {row["key"]: row for row in json_answer(sess, hpcorch(sess, ["ls", "--json"]))}
        except HpcorchError as exc:
            listed, why = {}, str(exc)
        else:
            why = "not in the login node's registry"
        for entry in group:
            row = listed.get(entry.remote_ref.key) or {}
            found[entry.key] = {"state": str(row.get("state") or f"UNKNOWN ({why})"),
                                "goodput": number(row.get("goodput"))}
    return found


def status(entry: Entry) -> dict:
    """The login node's ``status --json`` for the job, under this machine's number; offline,
    the progress from the last ``hpcorch pull`` with the state UNKNOWN."""
    ref = entry.remote_ref
    try:
        sess = session(ref.profile)
        info = json_answer(sess, hpcorch(sess, ["status", str(ref.key), "--json"]))
    except RemoteError as exc:
        mirror = entry.pulled_dir
        if not mirror.is_dir():
            raise
        from hpcorch.observe import status as observe

        local = Entry(**{**entry.__dict__, "run_dir": str(mirror), "remote": None})
        return {"key": entry.key, "job_id": entry.job_id, "name": entry.name, "state": f"UNKNOWN ({exc})",
                **observe.progress(local), "next": None, "run_dir": entry.run_dir, "host": ref.host,
                "pulled": str(mirror)}
    return {**info, "key": entry.key, "remote_key": ref.key, "host": ref.host}


def cancel(entry: Entry) -> str:
    ref = entry.remote_ref
    sess = session(ref.profile)
    return f"{hpcorch(sess, ['cancel', str(ref.key)]).decode().strip()} (on {ref.host})"


def logs(entry: Entry, write: Callable[[str], None], rank: int = 0, stream: str = "out",
         follow: bool = False) -> None:
    """The login node's ``hpcorch logs`` streamed here: with ``follow`` it reads the log as it
    grows there, so only new bytes cross the network."""
    ref = entry.remote_ref
    sess = session(ref.profile)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    args = ["logs", str(ref.key), "--rank", str(rank)] + (["--err"] if stream == "err" else []) + \
        (["-f"] if follow else [])
    hpcorch(sess, args, on_stdout=lambda data: write(decoder.decode(data)))
    tail = decoder.decode(b"", final=True)
    if tail:
        write(tail)


def resume(entry: Entry, exclude: str | None = None, allow_config_change: bool = False,
           registry: Registry | None = None) -> Entry:
    """``hpcorch resume`` on the login node (which excludes the nodes that failed there); the
    new submission is recorded here as resumed from ``entry``."""
    ref = entry.remote_ref
    sess = session(ref.profile)
    args = ["resume", str(ref.key), "--json", "--no-wait"] + (["--exclude", exclude] if exclude else []) + \
        (["--allow-config-change"] if allow_config_change else [])
    return _record(json_answer(sess, hpcorch(sess, args)), ref.profile, ref.host, registry, resumed_from=entry.key)


# ----- pull --------------------------------------------------------------------------------------
def pull(entry: Entry, into: str | os.PathLike | None = None):
    """Fetch the remote run directory's metrics, summary, events, logs and exit records (never
    checkpoints) into ``into`` (default :attr:`Entry.pulled_dir`), moving only what changed since
    the last pull (appended files by offset). Returns (folder, SyncStats)."""
    from hpcorch.remote.sync import pull as sync_pull

    ref = entry.remote_ref
    sess = session(ref.profile)
    target = Path(into) if into is not None else entry.pulled_dir
    target.mkdir(parents=True, exist_ok=True)
    return target, sync_pull(sess, entry.run_dir, str(target))
