"""Weights out of a run's checkpoint, for use outside hpcorch (``hpcorch export``)."""
from __future__ import annotations

import os
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.spec.job import load_job
from hpcorch.state.registry import Registry
from hpcorch.state.rundir import RunDir

EXPORT_FORMATS = ("hpcorch", "hf")


def export(ref: str, out: str | os.PathLike, step: int | None = None, registry: Registry | None = None,
           format: str = "hpcorch", max_shard_size: str = "5GB") -> Path:
    """Write the model weights of job ``ref``'s checkpoint (the latest committed one, or
    ``step``): ``format`` ``hpcorch``, one plain file ``out`` under hpcorch's names (see
    :mod:`hpcorch.train.checkpoint.export`); ``hf``, a Hugging Face folder ``out`` that
    transformers' ``from_pretrained`` loads (weights sharded above ``max_shard_size``). ``ref`` is
    a run directory or a job in the registry. Returns the file or folder written."""
    from hpcorch.state.rundir import CheckpointLayout

    if format not in EXPORT_FORMATS:
        raise HpcorchError(f"unknown export format {format!r}; known: {', '.join(EXPORT_FORMATS)}")
    run = RunDir.open(ref) if Path(ref).is_dir() else RunDir.open((registry or Registry()).get(ref).run_dir)
    committed = CheckpointLayout(run.checkpoints).committed_steps()
    if not committed:
        raise HpcorchError(f"no committed checkpoint in {run.checkpoints}")
    if step is not None and step not in committed:
        raise HpcorchError(f"no committed checkpoint at step {step} in {run.checkpoints} (committed: {committed})")
    step = committed[-1] if step is None else step
    from hpcorch.train.checkpoint.export import export_hf, export_weights
    from hpcorch.train.checkpoint.hf import HFFolderError, parse_size
    from hpcorch.train.checkpoint.store import CheckpointError

    try:
        if format == "hpcorch":
            return export_weights(run.checkpoints, step, Path(out))
        job = load_job(run.job_file) if run.job_file.is_file() else None
        fallback = job.trainer.model if job is not None else None
        from hpcorch.service.data import load_tokenizer, run_tokenizer, submitted_from

        # Known before any weight is written, so a dataset that is gone fails the export first.
        name = run_tokenizer(job, submitted_from(run)) if job is not None else None
        tokenizer = load_tokenizer(name) if name else None
        export_hf(run.checkpoints, step, Path(out), parse_size(max_shard_size), fallback_model=fallback,
                  eos_token_id=tokenizer.eot_id if tokenizer else None)
        if tokenizer:
            tokenizer.save_hf(Path(out))  # the tokenizer's files beside the weights
        return Path(out)
    except (CheckpointError, HFFolderError, ValueError, OSError) as exc:
        raise HpcorchError(str(exc)) from None
