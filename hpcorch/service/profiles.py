"""Cluster profiles as a Python API: list, show, validate, discover, drift and Slurm's config files.

Each function returns data (dicts, lists, paths) and raises :class:`hpcorch.errors.HpcorchError`
subclasses for bad input; ``hpcorch profile ...`` only prints what they return. None imports
torch or submitit.
"""
from __future__ import annotations

import os
from pathlib import Path


def list_profiles() -> list[dict]:
    """Every profile found by name (yours: $HPCORCH_PROFILE_PATH, $HPCORCH_HOME/profiles; then the
    shipped ones): name, scheduler, node count, partition names and description."""
    from hpcorch.spec.profile import list_profiles as found
    from hpcorch.spec.profile import load_profile

    rows = []
    for name in found():
        prof = load_profile(name)
        rows.append({"name": name, "scheduler": prof.scheduler, "nodes": len(prof.all_hosts()),
                     "partitions": [p.name for p in prof.partitions], "description": prof.description})
    return rows


def show(name: str | None = None) -> dict:
    """The profile ``name`` (default: $HPCORCH_PROFILE, else local) with its defaults filled in."""
    from hpcorch.spec.profile import load_profile
    from hpcorch.spec.schema import to_dict

    return to_dict(load_profile(name))


def as_yaml(data: dict) -> str:
    """``data`` as the YAML a profile file is written in (what ``profile show`` prints)."""
    from hpcorch.spec.yamlio import dump_yaml

    return dump_yaml(data)


def validate(name: str) -> dict:
    """Load profile ``name`` (a name or a path); ConfigError naming the file and key when it is
    invalid, else its node and partition counts."""
    from hpcorch.spec.profile import load_profile

    prof = load_profile(name)
    return {"profile": name, "ok": True, "nodes": len(prof.all_hosts()), "partitions": len(prof.partitions)}


def name_of(ref: str | None) -> str | None:
    """A profile's name from a name or a path (quarantine and the registry key by the name)."""
    if ref is None:
        return None
    from hpcorch.spec.profile import load_profile

    return load_profile(ref).name


def discover(name: str | None = None, output: str | os.PathLike | None = None, force: bool = False) -> str:
    """A draft profile of the cluster this login node's Slurm reaches, as YAML text; written to
    ``output`` when given (an existing file only with ``force``, checked before Slurm is asked)."""
    from hpcorch.cluster.discover import discover as draft
    from hpcorch.errors import ConfigError

    if output and Path(output).exists() and not force:
        raise ConfigError(str(output), "", "exists; pass --force to overwrite it")
    text = draft(name=name)
    if output:
        Path(output).write_text(text)
    return text


def drift(name: str) -> list[str]:
    """Where profile ``name`` and the live cluster disagree, one line per drift (empty: agree)."""
    from hpcorch.cluster.drift import diff_profile

    return diff_profile(name)


def slurm_conf(name: str, out_dir: str | os.PathLike, devcluster: bool = False,
               state_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write slurm.conf, gres.conf and topology.conf for profile ``name`` into ``out_dir`` (with
    ``devcluster``: also cgroup.conf and slurmdbd.conf for a dev cluster in ``state_dir``)."""
    from hpcorch.cluster.slurmconf import LocalCluster, write_configs
    from hpcorch.spec.profile import load_profile

    local = None
    if devcluster:
        from hpcorch.cluster.devcluster import DEFAULT_STATE_DIR

        local = LocalCluster(Path(state_dir) if state_dir else DEFAULT_STATE_DIR)
    return write_configs(load_profile(name), Path(out_dir), local)
