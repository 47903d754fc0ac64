"""Throughput, wall time, GPU-hours and the checkpoint interval of a job (torch-free).

tokens/s = GPUs x peak FLOP/s x MFU / FLOPs per token (for the GPT 6N plus the attention term:
:meth:`hpcorch.train.models.spec.Shapes.flops_per_token` of the job's model family). The MFU is
the profile's assumption (``planning.mfu``) until the user's own completed runs on the profile calibrate it:
the caller reads them (the registry, :mod:`hpcorch.plan.verdict`) and passes a :class:`Calibration` in.

The checkpoint interval that minimises the expected time lost to saves and to the work
redone after a failure is Young's (and Daly's first-order) ``sqrt(2 x save_s x MTBF)``, with
the job's MTBF = one node's MTBF / nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hpcorch.plan.estimate.memory import checkpoint_bytes
from hpcorch.train.models import spec_of


def _median(values) -> float:
    import statistics  # with decimal and fractions: a cold plan's cost when nothing is calibrated

    return statistics.median(values)


@dataclass(frozen=True)
class Calibration:
    """What earlier runs measured: the MFU of completed runs on the profile (one median per
    run), the blocking save times of earlier runs of the same job (``checkpoint_save``) and
    the median tokens/s of its completed runs at the same world size."""

    mfus: tuple[float, ...] = ()
    save_times: tuple[float, ...] = ()
    tokens_per_s: tuple[float, ...] = ()  # completed runs of the same job at the same world size

    @property
    def mfu(self) -> float | None:
        return _median(self.mfus) if self.mfus else None

    @property
    def save_s(self) -> float | None:
        return _median(self.save_times) if self.save_times else None


@dataclass(frozen=True)
class TimeEstimate:
    """The plan's time figures; ``tokens_per_s`` and what follows it are None without a peak
    FLOP/s (CPU nodes, or node types that disagree)."""

    mfu: float
    mfu_source: str
    tokens_per_s: float | None
    wall_s: float | None
    gpu_hours: float | None
    checkpoint_bytes: int
    save_s: float
    save_source: str
    job_mtbf_h: float
    interval_s: float
    interval_steps: int | None
    configured_steps: int


def young_daly(save_s: float, mtbf_s: float) -> float:
    """Young's optimal time between checkpoints, ``sqrt(2 x save time x MTBF)`` (seconds)."""
    return math.sqrt(2.0 * save_s * mtbf_s)


def estimate_time(job, peak_tflops: float | None, gpus: int, planning, calibration: Calibration = Calibration()
                  ) -> TimeEstimate:
    """The time figures of ``job`` on ``gpus`` GPUs of ``peak_tflops`` each (dense bf16), with
    the profile's ``planning`` section and what earlier runs measured."""
    tr, res = job.trainer, job.resources
    if calibration.mfu is not None:
        mfu, mfu_source = calibration.mfu, f"calibrated: median of {len(calibration.mfus)} completed run(s)"
    else:
        mfu, mfu_source = planning.mfu, "assumed: profile planning.mfu"
    tokens_per_step = tr.global_batch * tr.model.seq_len
    tokens_per_s = wall_s = gpu_hours = None
    if peak_tflops and gpus:
        tokens_per_s = gpus * peak_tflops * 1e12 * mfu / spec_of(tr.model).shapes.flops_per_token(tr.model)
    elif calibration.tokens_per_s:  # no peak to scale (CPU nodes): the job's own measured speed
        tokens_per_s = _median(calibration.tokens_per_s)
        mfu_source = f"no peak FLOP/s; tokens/s measured: median of {len(calibration.tokens_per_s)} run(s)"
    if tokens_per_s and not math.isfinite(tr.steps * tokens_per_step / tokens_per_s):
        tokens_per_s = None  # a throughput so small its wall time overflows: no figure, not infinity
    if tokens_per_s:
        wall_s = tr.steps * tokens_per_step / tokens_per_s
        gpu_hours = wall_s * gpus / 3600 if gpus else None
    size = checkpoint_bytes(tr.model, tr.optimizer.name)
    if calibration.save_s is not None:
        save_s, save_source = calibration.save_s, f"measured: median of {len(calibration.save_times)} save(s)"
    else:
        save_s = size / (planning.checkpoint_write_gbps * 1e9)
        save_source = f"estimated: {size / 1e9:.3g} GB at {planning.checkpoint_write_gbps:g} GB/s"
    mtbf_h = planning.node_mtbf_hours / res.nodes
    interval = young_daly(save_s, mtbf_h * 3600)
    steps = None
    if tokens_per_s and math.isfinite(interval / (tokens_per_step / tokens_per_s)):
        steps = max(1, round(interval / (tokens_per_step / tokens_per_s)))
    return TimeEstimate(mfu, mfu_source, tokens_per_s, wall_s, gpu_hours, size, save_s, save_source, mtbf_h,
                        interval, steps, tr.checkpoint.interval)
