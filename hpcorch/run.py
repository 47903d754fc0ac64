"""A run directory: the resolved job, checkpoints, logs, metrics and the summary of one run."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError
from .spec.job import JobSpec, load_job
from .plan import default_run_dir
from .spec.schema import to_dict


def write_resolved_job(job: JobSpec, run_dir: Path) -> Path:
    """``run_dir/job.yaml``: the job exactly as validated (overrides applied), which every
    rank, and every restart, reads."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "job.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(job), sort_keys=False))
    os.replace(tmp, path)
    return path


def prepare_run_dir(job_path: str, overrides, run_dir: str | None, nproc: int | None = None):
    """Load the job for a single-node local run of ``nproc`` ranks and write its resolved copy."""
    overrides = list(overrides)
    if nproc is not None:
        overrides += ["resources.nodes=1", f"resources.tasks_per_node={nproc}"]
    job = load_job(job_path, overrides)
    if job.resources.nodes != 1:
        raise ConfigError(str(job_path), "resources.nodes",
                          f"a local run uses one node, got {job.resources.nodes}; pass --nproc")
    path = Path(run_dir) if run_dir else default_run_dir(job)
    return job, write_resolved_job(job, path.absolute()), path.absolute()
