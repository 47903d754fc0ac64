"""Sweeps on a login node reached over SSH (``hpcorch sweep JOB -p PROFILE --remote``).

The points are planned here first (a bad value is one line before anything connects); then the
resolved job and profile (with the ``--list`` file, the ``--code`` folder and the templates) go to
the login node, whose own ``hpcorch sweep`` submits the arrays and keeps the sweep's record and its
points' registry entries, with its own paths, as a sweep submitted there would. This side keeps
only which login node holds the sweep (``HPCORCH_HOME/remote-sweeps/NAME.json``), so that ``sweep
status``, ``cancel`` and ``resume`` NAME run there too (:func:`recorded`, :func:`forward`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.spec.catalog import hpcorch_home, lasting

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
    path.write_text(json.dumps({"name": sp.name, "profile": profile_ref, "host": sess.host,
                                "root": info["root"]}))
    return {**info, "host": sess.host}


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


def status(record: dict, sort: str | None = None) -> dict:
    """``sweep status NAME`` of the sweep of ``record``, as its login node computes it (its
    registry, its scheduler), with the node's name as ``host``."""
    from hpcorch.remote import ops

    sess = ops.session(record["profile"])
    args = ["sweep", "status", record["name"], "--json"] + (["--sort", sort] if sort else [])
    return {**ops.json_answer(sess, ops.hpcorch(sess, args)), "host": record["host"]}
