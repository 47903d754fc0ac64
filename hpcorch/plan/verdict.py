"""The planner on a plan: will the job fit the GPUs, how long, how many GPU-hours, how often to
checkpoint. The arithmetic is :mod:`hpcorch.plan.estimate` (torch-free); this module reads what it
needs from the profile, the landing node types and the registry (earlier runs calibrate the
MFU and the save time), refuses a job that cannot fit, and names the cheapest change that does.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from hpcorch.errors import PlanError
from hpcorch.plan.estimate.memory import GIB, MemoryEstimate, estimate_memory
from hpcorch.plan.estimate.time import Calibration, TimeEstimate, estimate_time
from hpcorch.spec.schema import Invalid
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import json_lines, number

log = logging.getLogger(__name__)

# Runs whose metrics are read for the calibration (the newest first): enough for a median;
# of each, the last METRICS_TAIL bytes of metrics.jsonl (a few thousand steps), so that a plan
# stays well under a second however long the runs were.
CALIBRATION_RUNS = 20
METRICS_TAIL = 256 * 1024


@dataclass(frozen=True)
class Fit:
    """The memory estimate against one GPU of the node types the job may land on."""

    memory: MemoryEstimate
    gpu_bytes: int | None  # None: a CPU job (CPU memory is no profile promise)
    gpu_model: str

    @property
    def fits(self) -> bool:
        return self.gpu_bytes is None or self.memory.total <= self.gpu_bytes


def gpu_memory(plan) -> tuple[int | None, str]:
    """Bytes of the smallest GPU the job may land on (``memory_gb`` read as GiB), and its model."""
    if not plan.job.resources.gpus_per_node:
        return None, "CPU"
    gpus = [g.spec.gpus for g in plan.landing_groups if g.spec.gpus.count and g.spec.gpus.memory_gb]
    if not gpus:
        return None, "GPU (memory_gb unknown)"
    smallest = min(gpus, key=lambda g: g.memory_gb)
    return smallest.memory_gb * GIB, str(smallest.model or "GPU")


def fit(plan, job=None) -> Fit:
    """``job`` (default the plan's) on the plan's GPUs."""
    job = job or plan.job
    gpu_bytes, model = gpu_memory(plan)
    device = "cuda" if plan.job.resources.gpus_per_node else "cpu"
    overhead = int(plan.profile.planning.cuda_overhead_gb * GIB)
    return Fit(estimate_memory(job, device, overhead), gpu_bytes, model)


def check_fit(plan, force: bool = False) -> Fit:
    """Refuse (PlanError) a GPU job whose estimate exceeds its GPUs, naming the cheapest single
    change that fits; with ``force``, the same line becomes a warning on the plan."""
    result = fit(plan)
    if result.fits:
        return result
    est = result.memory
    fix = None if est.overhead >= result.gpu_bytes else cheapest_fix(plan)
    change = (f"the cheapest change that fits: --set {fix[0]} ({fix[1].memory.total / GIB:.1f} GiB)" if fix
              else "the profile's planning.cuda_overhead_gb alone fills the GPU: check it and gpus.memory_gb"
              if est.overhead >= result.gpu_bytes
              else "no single change fits (activation checkpointing, sharding, micro_batch, tp)")
    message = (f"needs about {est.total / GIB:.1f} GiB per GPU ({_parts(est)}; peak at the {est.phase}, "
               f"{est.rank}), more than the {result.gpu_bytes / GIB:.0f} GiB of a {result.gpu_model}; {change}")
    key = fix[0].split("=")[0] if fix else "trainer"
    if not force:
        raise PlanError(plan.source, key, message + "; --force submits anyway")
    plan.warnings.append(f"{key}: {message} (--force: going ahead)")
    return result


def _parts(est: MemoryEstimate) -> str:
    parts = {"params": est.params, "grads": est.grads, "optimizer": est.optimizer,
             "activations": est.activations, "temporary": est.temporary, "CUDA": est.overhead}
    return ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if v)


def _gib(size: float) -> str:
    """GiB with one decimal; a part under 0.1 GiB in MiB, not as a misleading 0.0."""
    return f"{size / GIB:.1f}" if size >= GIB / 10 else f"{size / 2**20:.0f} MiB"


def candidates(job) -> list[tuple[str, object]]:
    """Single changes that lower memory, cheapest first: activation checkpointing, more sharding,
    a smaller micro-batch, tensor parallelism. Each as ``(KEY=VALUE, the changed job)``;
    changes the job's own rules would refuse (layout, Adafactor, compression) are left out."""
    tr, res = job.trainer, job.resources
    layout = job.layout
    out: list[tuple[str, object]] = []

    def changed(text: str, apply) -> None:
        new = copy.deepcopy(job)
        apply(new.trainer)
        try:  # the whole job's rules, as --set would meet them (Adafactor, compression, layout)
            new.trainer.__post_init__()
            new.__post_init__()
        except Invalid:
            return
        out.append((text, new))

    if not tr.activation_checkpointing:
        changed("trainer.activation_checkpointing=true", lambda t: setattr(t, "activation_checkpointing", True))
    if layout.kind == "ddp" and layout.dp > 1:
        changed("trainer.sharding=fsdp", lambda t: setattr(t, "sharding", "fsdp"))
    elif layout.dp_replicate > 1:
        dp = layout.dp
        changed(f"trainer.parallel.dp_shard={dp} --set trainer.parallel.dp_replicate=1",
                lambda t: (setattr(t.parallel, "dp_shard", dp), setattr(t.parallel, "dp_replicate", 1)))
    micro = tr.micro_batch // 2
    while micro >= 1:
        changed(f"trainer.micro_batch={micro}", lambda t, m=micro: setattr(t, "micro_batch", m))
        micro //= 2
    tp = layout.tp * 2
    while tp <= res.tasks_per_node:
        changed(f"trainer.parallel.tp={tp}", lambda t, v=tp: setattr(t.parallel, "tp", v))
        tp *= 2
    return out


def cheapest_fix(plan) -> tuple[str, Fit] | None:
    """The first single change (in :func:`candidates`' order) whose estimate fits."""
    for text, job in candidates(plan.job):
        result = fit(plan, job)
        if result.fits:
            return text, result
    return None


# ----- calibration from earlier runs ------------------------------------------------------------
def calibration(profile: str, job_name: str, world_size: int = 0, registry=None) -> Calibration:
    """MFU of completed runs on ``profile`` (the median of each run's metrics), blocking save
    times of earlier runs of ``job_name`` there, and the tokens/s of its completed runs at
    ``world_size`` ranks, from the registry's run directories."""
    from hpcorch.state.registry import Registry, default_path

    if registry is None and not default_path().exists():
        return Calibration()  # no runs yet, and a plan creates no registry
    try:
        entries = [e for e in (registry or Registry()).all() if e.profile == profile and not e.remote]
    except Exception as exc:  # a broken or missing registry must not stop a plan
        log.debug("no calibration: %s", exc)
        return Calibration()
    entries.sort(key=lambda e: e.submitted, reverse=True)
    import statistics  # only when there are runs to learn from: its import is a cold plan's cost

    mfus, saves, speeds = [], [], []
    for entry in entries[:CALIBRATION_RUNS]:
        run = RunDir(entry.run_dir)
        same_job = entry.name == job_name
        if run.summary_file.exists():
            records = list(json_lines(run.metrics, METRICS_TAIL))
            values = [r["mfu"] for r in records if _measured(r.get("mfu"), 1.0)]
            if values:
                mfus.append(statistics.median(values))
            # Without a peak FLOP/s (CPU nodes) only the job's own measured speed says anything.
            rates = [r["tokens_per_s"] for r in records if _measured(r.get("tokens_per_s"))]
            if same_job and rates and run.summary().get("world_size") == world_size:
                speeds.append(statistics.median(rates))
        if same_job:
            saves += [r["blocking_s"] for r in json_lines(run.events)
                      if r.get("event") == "checkpoint_save" and _measured(r.get("blocking_s"), 1e7)]
    return Calibration(tuple(mfus), tuple(saves), tuple(speeds))


def _measured(value, most: float = 1e15) -> bool:
    """A figure a run could have measured: a number in (0, most]. A hand-edited or torn record
    (true, NaN, Infinity, a negative time, an MFU of 5) must not become the plan's assumption."""
    found = number(value)
    return found is not None and 0 < found <= most


# ----- the plan's summary -----------------------------------------------------------------------
def summary(plan, result: Fit | None = None, calib: Calibration | None = None) -> dict:
    """The planner's part of ``hpcorch plan``: memory per GPU (GiB) against the GPU, and time."""
    result = result or fit(plan)
    est = result.memory
    res = plan.job.resources
    gib = {k: round(v / GIB, 2) for k, v in est.as_dict().items() if isinstance(v, int)}
    memory = {**gib, "peak_at": f"{est.phase}, {est.rank}",
              "gpu": round(result.gpu_bytes / GIB, 2) if result.gpu_bytes else None,
              "fits": result.fits if result.gpu_bytes else None}
    calib = calib if calib is not None else calibration(plan.profile.name, plan.job.name, plan.world_size)
    gpus = res.nodes * res.gpus_per_node
    times = estimate_time(plan.job, plan.peak_tflops, gpus, plan.profile.planning, calib)
    return {"memory_gib": memory, "time": _time_view(times)}


def _time_view(t: TimeEstimate) -> dict:
    return {"mfu": round(t.mfu, 4), "mfu_source": t.mfu_source,
            "tokens_per_s": round(t.tokens_per_s) if t.tokens_per_s else None,
            "wall_hours": round(t.wall_s / 3600, 2) if t.wall_s else None,
            "gpu_hours": round(t.gpu_hours, 1) if t.gpu_hours else None,
            "checkpoint_gb": round(t.checkpoint_bytes / 1e9, 3), "save_s": round(t.save_s, 2),
            "save_source": t.save_source, "job_mtbf_hours": round(t.job_mtbf_h, 1),
            "checkpoint_interval_s": round(t.interval_s),
            "checkpoint_interval_steps": t.interval_steps, "configured_interval_steps": t.configured_steps}
