"""What ``hpcorch ls`` and ``hpcorch status`` print for people: aligned tables and sections
with human numbers (:mod:`.display`). ``--json`` prints the same dicts raw instead.

Both take the dicts of :func:`hpcorch.service.jobs` / :func:`hpcorch.service.status` and show
what is there: ``goodput`` and ``warnings`` appear when present, and keys this module does not
know still appear, at the end, as they are.
"""
from __future__ import annotations

import time

from hpcorch.plan.layout import layout_rows
from hpcorch.util.display import Column, cell, duration, percent, table

LS_COLUMNS = (Column("#", number=True), Column("job id", number=True), Column("name"), Column("profile"),
              Column("state"), Column("progress", number=True), Column("goodput", number=True),
              Column("age", number=True), Column("run dir"))


def progress_cell(step: int | None, steps: int | None) -> str:
    """``1,200/5,000``; the step alone when the plan is unknown; ``-`` before any step."""
    if step is None:
        return "-"
    return f"{step:,}/{steps:,}" if steps else f"{step:,}"


def jobs_lines(rows: list[dict], now: float | None = None) -> list[str]:
    """``hpcorch ls``: one aligned line per job under a header."""
    now = time.time() if now is None else now
    cells = []
    for r in rows:
        where = f"{r['host']}:{r['run_dir']}" if r.get("host") else r["run_dir"]  # remote: on the login node
        submitted = r.get("submitted")
        cells.append([str(r["key"]), str(r["job_id"]), r["name"], r["profile"], r["state"],
                      progress_cell(r.get("step"), r.get("steps")), percent(r.get("goodput")),
                      duration(max(0.0, now - submitted)) if submitted else "-", where])
    return table(LS_COLUMNS, cells)


# ----- status ---------------------------------------------------------------------------------
# The labels of the keys status knows, in the order shown; the rest follow under their own names.
_LABELS = {"state": "state", "progress": "progress", "latest_checkpoint": "latest checkpoint",
           "loss": "loss", "tokens_per_s": "tokens/s", "restarts": "restarts", "placement": "placement",
           "note": "note", "host": "host", "remote_key": "number there", "pulled": "pulled into",
           "run_dir": "run dir", "next": "next"}
_SHOWN_ELSEWHERE = {"key", "job_id", "name", "step", "steps", "requeues", "goodput", "warnings"}
_BUCKETS = {"productive": "productive steps", "startup": "start-up", "recomputed": "recomputed steps",
            "checkpoint": "blocking checkpoint", "eval": "evaluation", "idle_after_signal": "idle after signal",
            "other": "other"}


def status_lines(info: dict) -> list[str]:
    """``hpcorch status``: a title line, the job's facts, then its goodput and warnings."""
    lines = [f"job {info.get('key')} {info.get('name', '')} (job id {info.get('job_id')})"]
    lines += _pairs(_facts(info))
    if info.get("goodput"):
        lines += ["", *goodput_lines(info["goodput"])]
    if info.get("warnings"):
        lines += ["", "warnings", *(f"  ! {w}" for w in info["warnings"])]
    return lines


def _facts(info: dict) -> dict[str, str]:
    values = dict(info)
    values["progress"] = _progress_text(info.get("step"), info.get("steps"))
    if info.get("latest_checkpoint") is not None:
        values["latest_checkpoint"] = f"step {info['latest_checkpoint']:,}"
    if isinstance(info.get("loss"), (int, float)):
        values["loss"] = f"{info['loss']:.4f}"
    if isinstance(info.get("tokens_per_s"), (int, float)):
        values["tokens_per_s"] = f"{info['tokens_per_s']:,.0f}"
    values["restarts"] = _restarts_text(info.get("restarts"), info.get("requeues"))
    shown = {label: values[key] for key, label in _LABELS.items() if values.get(key) is not None}
    extra = {k: v for k, v in info.items() if k not in _LABELS and k not in _SHOWN_ELSEWHERE and v is not None}
    return {**shown, **{k.replace("_", " "): cell(k, v) for k, v in extra.items()}}


def _progress_text(step: int | None, steps: int | None) -> str | None:
    if step is None:
        return None
    if not steps:
        return f"step {step:,}"
    return f"step {step:,} of {steps:,} ({percent(step / steps)})"


def _restarts_text(restarts: int | None, requeues: dict | None) -> str | None:
    if restarts is None:
        return None
    causes = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (requeues or {}).items() if v)
    return f"{restarts:,}" + (f" (requeued: {causes})" if causes else "")


def goodput_lines(g: dict) -> list[str]:
    """The goodput section: the share of allocated time that trained, then where the rest went
    (each bucket's time and share), the queue wait (outside the allocation) and its source."""
    unit = g.get("unit") or "GPU"
    hours = g.get("allocated_hours")
    head = f"goodput  {percent(g.get('goodput'))} of {hours:,.2f} {unit}-hours" if hours is not None else \
        f"goodput  {percent(g.get('goodput'))}"
    attempts = g.get("attempts")
    head += f" over {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    head += f" (from {g['source']})" if g.get("source") else ""
    buckets = g.get("buckets_s") or {}
    total = sum(v for v in buckets.values() if isinstance(v, (int, float)))
    rows = [[_BUCKETS.get(k, k.replace("_", " ")), duration(v), percent(v / total if total else None)]
            for k, v in buckets.items() if isinstance(v, (int, float))]
    if g.get("queue_wait_s") is not None:
        rows.append(["queue wait", duration(g["queue_wait_s"]), "(not allocated)"])
    if g.get("steps_recomputed"):
        rows.append(["steps recomputed", f"{g['steps_recomputed']:,}", ""])
    body = table((Column("where the time went"), Column("time", number=True), Column("share", number=True)), rows)
    return [head, *(f"  {line}" for line in body)]


def _pairs(values: dict[str, str]) -> list[str]:
    width = max(map(len, values), default=0)
    return [f"{k:<{width}}  {v}" for k, v in values.items()]


# ----- plan -----------------------------------------------------------------------------------
_MEMORY_PARTS = ("params", "grads", "optimizer", "activations", "temporary", "overhead")


def memory_rows(m: dict) -> dict[str, str]:
    """The planner's memory per GPU (GiB, :func:`hpcorch.plan.verdict.summary`) as plan rows."""
    verdict = "" if m.get("fits") is None else ("; fits" if m["fits"] else "; DOES NOT FIT")
    against = f" of {m['gpu']:g} GiB" if m.get("gpu") else ""
    parts = ", ".join(f"{k} {m[k]:g}" for k in _MEMORY_PARTS if m.get(k))
    return {"memory per GPU": f"{m.get('total', 0):g} GiB{against}{verdict} (peak at {m.get('peak_at', '?')})",
            "memory parts": f"{parts} GiB" if parts else "-"}


def time_rows(t: dict) -> dict[str, str]:
    """The planner's time figures (:func:`hpcorch.plan.verdict.summary`) as plan rows."""
    rows = {}
    if t.get("tokens_per_s"):
        rows["throughput"] = f"{t['tokens_per_s']:,.0f} tokens/s at MFU {percent(t['mfu'])} ({t['mfu_source']})"
        wall = duration(t["wall_hours"] * 3600) if t.get("wall_hours") is not None else "-"
        rows["wall time"] = wall + (f", {t['gpu_hours']:,.1f} GPU-hours" if t.get("gpu_hours") else "")
    else:
        rows["throughput"] = "unknown: no peak FLOP/s in the profile and no completed run of this job to measure"
    every = (f" = every {t['checkpoint_interval_steps']:,} steps" if t.get("checkpoint_interval_steps") else "")
    rows["checkpoint"] = (f"{t['checkpoint_gb']:g} GB, save {t['save_s']:g} s ({t['save_source']}); job MTBF "
                          f"{t['job_mtbf_hours']:,g} h -> Young/Daly interval {duration(t['checkpoint_interval_s'])}"
                          f"{every} (configured: every {t['configured_interval_steps']:,})")
    return rows


def table_view(summary: dict) -> dict:
    """``summarize``'s output for the plan table: the ``layout`` entry expanded into rows, the
    ``placement`` entry as one line, the planner's memory and time as readable rows."""
    out: dict = {}
    for key, value in summary.items():
        if key == "layout" and isinstance(value, dict):
            out.update(layout_rows(value))
        elif key == "memory_gib" and isinstance(value, dict):
            out.update(memory_rows(value))
        elif key == "time" and isinstance(value, dict):
            out.update(time_rows(value))
        elif key == "placement" and isinstance(value, dict):
            asked = value.get("directive")
            out[key] = value["summary"] + (f"; asks {asked}" if asked else "")
        else:
            out[key] = value
    return out
