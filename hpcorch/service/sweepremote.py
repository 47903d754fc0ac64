"""Sweeps on a login node reached over SSH (``hpcorch sweep JOB -p PROFILE --remote``).

The points are planned here first (a bad value is one line before anything connects); then the
resolved job and profile (with the ``--list`` file, the ``--code`` folder and the templates) go to
the login node, whose own ``hpcorch sweep`` submits the arrays and keeps the sweep's record and its
points' registry entries, with its own paths, as a sweep submitted there would. This side keeps
only which login node holds the sweep (``HPCORCH_HOME/remote-sweeps/NAME.json``), so that ``sweep
status``, ``cancel`` and ``resume`` NAME run there too (:func:`recorded`, :func:`forward`).

Each point the login node registers is registered here too, as a remote submit's job is
(:func:`adopt`): ``hpcorch ls`` lists them (as one sweep line, ``--expand`` one per point) and
``status``, ``logs``, ``cancel`` take their numbers. On Slurm the login node registers every point
when it submits the arrays; under the local runner a point when it starts, so ``ls`` adopts the
points of a sweep that has fewer here than it was submitted with (one ``ls`` per login node).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.spec.catalog import hpcorch_home, lasting
from hpcorch.state.registry import Registry

log = logging.getLogger(__name__)

RECORDS = "remote-sweeps"


@dataclass
class RemoteSweep:
    """What ``--remote`` adds to a sweep's submission: the folders that travel with it."""

    code_dir: str | None = None       # --code: synced; the login node submits from that copy
    list_file: str | None = None      # --list: its points, sent as a file
    template_dir: str | None = None   # --template-dir: synced
    accept_new: bool = False          # store the login node's host key if it is not known yet


def goes_remote(sp, remote: bool | None) -> bool:
    """Whether sweep plan ``sp`` is submitted on its profile's login node (as ``submit``
    decides: ``--remote``/``--here``, else a profile with ``login:`` and no ``sbatch`` here)."""
    from hpcorch.remote.ops import wanted

    return wanted(sp.points[0].plan.profile, remote, sp.profile)


def submit(sp, point_args: list[str], extra: RemoteSweep, check: bool = False, force: bool = False) -> dict | str:
    """Submit sweep plan ``sp`` on its profile's login node and record there which node holds it.
    ``point_args``: the options that make the points (``--grid``, ``--zip``, ``--sample``,
    ``--samples``, ``--seed``, ``--max-parallel``), passed on as typed. ``check``: only ask that
    cluster (``sbatch --test-only``) and return its answers. Returns ``{name, root, arrays, host}``."""
    from hpcorch.remote import ops
    from hpcorch.spec.job import job_to_dict, load_job
    from hpcorch.spec.schema import to_dict
    from hpcorch.spec.yamlio import dump_yaml

    profile = sp.points[0].plan.profile
    texts = {"job.yaml": dump_yaml(job_to_dict(load_job(sp.job, sp.overrides))),
             "profile.yaml": dump_yaml(to_dict(profile))}
    if extra.list_file is not None:
        texts["points.txt"] = Path(extra.list_file).read_text()
    ops.check_code_dir(sp.points[0].plan, extra.code_dir)  # every point shares the job's code folder
    sess = ops.session(sp.profile, extra.accept_new)
    spec_dir = ops.push_spec(sess, f"sweep-{sp.name}", texts)
    cwd = ops.push_code(sess, extra.code_dir)
    args = ["sweep", "submit", f"{spec_dir}/job.yaml", "-p", f"{spec_dir}/profile.yaml", "--here",
            "--name", sp.name, *point_args]
    args += ["--list", f"{spec_dir}/points.txt"] if extra.list_file is not None else []
    if extra.template_dir is not None:
        remote_templates = f"{sess.workdir}/templates/{Path(extra.template_dir).resolve().name}"
        ops.push(sess, extra.template_dir, remote_templates)
        args += ["--template-dir", remote_templates]
    args += ["--force"] if force else []
    if check:
        return ops.hpcorch(sess, [*args, "--check"], cwd=cwd).decode(errors="replace").strip()
    info = ops.json_answer(sess, ops.hpcorch(sess, [*args, "--json"], cwd=cwd))
    path = _record_path(sp.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile_ref = lasting(str(sp.profile))  # a relative profile path must still be found from another folder
    record = {"name": sp.name, "profile": profile_ref, "host": sess.host, "root": info["root"],
              "points": len(sp.points), "adopted": 0, "last_key": 0}
    path.write_text(json.dumps(record))
    adopt([record])
    return {**info, "host": sess.host}


def adopt(records: list[dict], registry: Registry | None = None) -> int:
    """Register here, as remote jobs, the points of the sweeps of ``records`` that their login
    node has registered since the last adoption (named ``SWEEP/POINT``, in the sweep's folder,
    a number above the last adopted); one ``ls`` per login node, which may be unreachable (then
    nothing now, the next ``ls`` tries again). Returns how many points were registered."""
    from hpcorch.remote import ops

    registry = registry or Registry()
    known = {(e.remote_ref.host, e.remote_ref.key) for e in registry.all() if e.remote}
    by_profile: dict[str, list[dict]] = {}
    for record in records:
        by_profile.setdefault(record["profile"], []).append(record)
    added = 0
    for profile_ref, group in by_profile.items():
        try:
            sess = ops.session(profile_ref)
            rows = ops.json_answer(sess, ops.hpcorch(sess, ["ls", "--json"]))
        except HpcorchError as exc:
            log.info("remote sweep points not adopted from %s: %s", profile_ref, exc)
            continue
        for record in group:
            mine = sorted((r for r in rows if str(r.get("name", "")).startswith(f"{record['name']}/")
                           and str(Path(r.get("run_dir", "/")).parent) == record["root"]
                           and int(r["key"]) > record.get("last_key", 0)), key=lambda r: int(r["key"]))
            for row in mine:
                if (sess.host, int(row["key"])) not in known:
                    ops.record_remote(row, profile_ref, sess.host, registry)
                    added += 1
                record["adopted"] = record.get("adopted", 0) + 1
                record["last_key"] = int(row["key"])
            if mine:
                _record_path(record["name"]).write_text(json.dumps(record))
    return added


def adopt_pending(registry: Registry | None = None) -> None:
    """:func:`adopt` the sweeps submitted from here whose points are not all registered here
    yet (none when every remote sweep is complete here: no connection)."""
    folder = hpcorch_home() / RECORDS
    pending = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("adopted", 0) < record.get("points", 0):
            pending.append(record)
    if pending:
        adopt(pending, registry)


def _record_path(name: str) -> Path:
    return hpcorch_home() / RECORDS / f"{name}.json"


def recorded(name: str) -> dict | None:
    """The record of sweep ``name`` submitted from here to a login node, or None (a sweep of this
    machine, a folder, or unknown)."""
    if "/" in name or not _record_path(name).is_file():
        return None
    try:
        return json.loads(_record_path(name).read_text())
    except ValueError:
        raise HpcorchError(f"{_record_path(name)}: not the record of a remote sweep (JSON expected); "
                           f"remove it") from None


def forward(record: dict, args: list[str]) -> bytes:
    """``hpcorch ARGS`` (``sweep status NAME --json``, ...) on the login node holding the sweep
    of ``record``; its stdout."""
    from hpcorch.remote import ops

    sess = ops.session(record["profile"])
    return ops.hpcorch(sess, args)


def resume(record: dict) -> str:
    """``sweep resume NAME`` on the login node holding the sweep of ``record``, then the points
    it resubmitted registered here (:func:`adopt`); its answer."""
    out = forward(record, ["sweep", "resume", record["name"]]).decode(errors="replace")
    adopt([record])
    return out


def status(record: dict, sort: str | None = None) -> dict:
    """``sweep status NAME`` of the sweep of ``record``, as its login node computes it (its
    registry, its scheduler), with the node's name as ``host``."""
    from hpcorch.remote import ops

    sess = ops.session(record["profile"])
    args = ["sweep", "status", record["name"], "--json"] + (["--sort", sort] if sort else [])
    return {**ops.json_answer(sess, ops.hpcorch(sess, args)), "host": record["host"]}
