"""Every table and text the CLI prints for people: aligned tables and sections with human
numbers (:mod:`hpcorch.util.display`). ``--json`` prints the same data raw instead.

Each view takes the data a :mod:`hpcorch.service` function returns and gives lines; the commands
only echo them.

Both take the dicts of :func:`hpcorch.service.jobs` / :func:`hpcorch.service.status` and show
what is there: ``goodput`` and ``warnings`` appear when present, and keys this module does not
know still appear, at the end, as they are.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from hpcorch.util.display import Column, cell, duration, percent, table, when


def text(data: Any, as_json: bool, view: Callable[[Any], list[str]]) -> str:
    """What a command prints: ``data`` as indented JSON (``--json``), else ``view``'s lines."""
    return json.dumps(data, indent=2) if as_json else "\n".join(view(data))


LS_COLUMNS = (Column("#", number=True), Column("job id", number=True), Column("name"), Column("profile"),
              Column("state"), Column("progress", number=True), Column("goodput", number=True),
              Column("age", number=True), Column("run dir"))


def progress_cell(step: int | None, steps: int | None) -> str:
    """``1,200/5,000``; the step alone when the plan is unknown; ``-`` before any step."""
    if step is None:
        return "-"
    return f"{step:,}/{steps:,}" if steps else f"{step:,}"


def collapse_sweeps(rows: list[dict]) -> list[dict]:
    """``hpcorch ls``'s rows with each sweep as one row (at its newest point's place): its points'
    states counted (the newest entry of each point), progress summed, the newest submission."""
    out: list[dict] = []
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("sweep"):
            groups.setdefault(r["sweep"], []).append(r)
    for r in rows:
        name = r.get("sweep")
        if not name:
            out.append(r)
            continue
        group = groups[name]
        if r is not group[-1]:
            continue
        latest = list({g["name"]: g for g in group}.values())
        counts: dict[str, int] = {}
        for g in latest:
            state = g["state"].split()[0]
            counts[state] = counts.get(state, 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        steps = [g.get("step") or 0 for g in latest]
        planned = [g.get("steps") or 0 for g in latest]
        out.append({**r, "name": f"{name} (sweep, {len(latest)} points)", "job_id": r["job_id"].split("_")[0],
                    "state": states, "step": sum(steps), "steps": sum(planned) or None,
                    "run_dir": str(r["run_dir"]).rsplit("/", 1)[0], "goodput": None})
    return out


def jobs_lines(rows: list[dict], now: float | None = None, expand: bool = False) -> list[str]:
    """``hpcorch ls``: one aligned line per job under a header; a sweep is one line unless ``expand``."""
    now = time.time() if now is None else now
    cells = []
    for r in rows if expand else collapse_sweeps(rows):
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
           "world": "world size", "failure": "last failure",
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
    sizes = g.get("world_sizes") or []
    if any(w is not None for w in sizes):  # a node range trains each attempt on what it got
        rows.append(["world size per attempt", ", ".join("?" if w is None else str(w) for w in sizes), ""])
    body = table((Column("where the time went"), Column("time", number=True), Column("share", number=True)), rows)
    return [head, *(f"  {line}" for line in body)]


def _pairs(values: dict[str, str]) -> list[str]:
    width = max(map(len, values), default=0)
    return [f"{k:<{width}}  {v}" for k, v in values.items()]


# ----- plan -----------------------------------------------------------------------------------
# Nodes the plan table lists one by one; beyond it: the first two, "...", the last.
NODES_SHOWN = 3
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


def _spans(values) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    values = sorted(set(values))
    out, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None], strict=True):
        if cur is None or cur != prev + 1:  # a run ends here
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(out)


def _node_row(node: dict) -> str:
    first, last = node["ranks"]
    coords = " ".join(f"{d}{_spans(node[d])}" for d in ("pp", "dp", "tp") if d in node)
    return f"rank{'s' if last > first else ''} {_spans(range(first, last + 1))}" + (f"  {coords}" if coords else "")


def layout_rows(info: dict) -> dict[str, str]:
    """The layout as rows of the plan table: the mesh, the pipeline stages, and which ranks sit
    on which node (the first two and the last when there are many)."""
    rows = {"layout": f"{info['mesh']}, {info['kind']}", "micro_batch": str(info["micro_batch"])}
    if info["sizes"]["pp"] > 1:
        layers = " | ".join(f"{a}-{b}" if b > a else str(a) for a, b in (s["layers"] for s in info["stages"]))
        rows["pp_stages"] = (f"{len(info['stages'])} stages, {info['pp_schedule']}, "
                             f"{info['accumulation']} micro-batches; layers {layers}")
    nodes = info["nodes"]
    shown = nodes if len(nodes) <= NODES_SHOWN else [*nodes[:2], None, nodes[-1]]
    for node in shown:
        if node is None:
            rows["..."] = f"nodes 2-{len(nodes) - 2}"
        else:
            rows[f"node {node['node']}"] = _node_row(node)
    return rows


def plan_lines(summary: dict) -> list[str]:
    """``hpcorch plan``: one aligned ``key  value`` line per row of :func:`table_view`."""
    return _pairs({key: cell(key, value) for key, value in table_view(summary).items()})


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


# ----- catalog and profiles -------------------------------------------------------------------
def catalog_lines(rows: list[dict]) -> list[str]:
    """``hpcorch jobs list``: name, nodes, GPUs per node, parameters (millions), description."""
    columns = (Column("name"), Column("nodes", number=True), Column("gpus/node", number=True),
               Column("parameters", number=True), Column("description"))
    cells = [[r["name"], str(r["nodes"]), str(r["gpus_per_node"]), f"{r['parameters'] / 1e6:,.1f}M",
              r["description"]] for r in rows]
    return table(columns, cells)


def profile_lines(rows: list[dict]) -> list[str]:
    """``hpcorch profile list``: name, scheduler, node count, partitions, description."""
    lines = [f"{'name':<12} {'kind':<6} {'nodes':>5}        {'partitions':<24} description"]
    lines += [f"{r['name']:<12} {r['scheduler']:<6} {r['nodes']:>5} nodes  "
              f"{','.join(r['partitions']):<24} {r['description']}" for r in rows]
    return lines


def validated_line(row: dict) -> str:
    """``hpcorch profile validate``: one line per valid profile."""
    return f"{row['profile']}: ok ({row['nodes']} nodes, {row['partitions']} partitions)"


# ----- nodes ------------------------------------------------------------------------------------
def _for_profile(name: str | None) -> str:
    return f" for profile {name}" if name else ""


def quarantine_lines(found: dict) -> list[str]:
    """``hpcorch nodes list``: profile, node, since, until, job and reason, lemons flagged."""
    if not found["nodes"]:
        return ["no node in quarantine" + _for_profile(found["profile"])]
    lines = [f"{'profile':<12} {'node':<12} {'since':<16} {'until':<16} {'job':<8} reason"]
    for q in found["nodes"]:
        flag = "  [lemon: quarantined again within a week]" if q["lemon"] else ""
        lines.append(f"{q['profile']:<12} {q['node']:<12} {when(q['since']):<16} {when(q['until']):<16} "
                     f"{q['job_id'] or '-':<8} {q['reason']}{flag}")
    return lines


def released_line(node: str, profile: str | None) -> str:
    """``hpcorch nodes clear``: what was released."""
    return f"released {node} from quarantine{_for_profile(profile)}"


# ----- manifest ---------------------------------------------------------------------------------
def _h(digest) -> str:
    return digest[:12] if digest else "-"


def _code_text(git: dict) -> str:
    """The git state of an attempt's code folder in one phrase."""
    if not git.get("repo"):
        return "not a git repository"
    dirty = (f", dirty: {git.get('patch_bytes', 0):,} bytes of changes ({git.get('untracked', 0)} untracked files)"
             f"{', cut' if git.get('patch_truncated') else ''}")
    return (f"{(git.get('commit') or 'no commit')[:12]} ({git.get('branch') or 'detached'})"
            + (dirty if git.get("dirty") else ", clean")
            + (f", {git['incomplete']}" if git.get("incomplete") else ""))


def manifest_lines(m: dict) -> list[str]:
    """One attempt's manifest: a title line, then code, versions, GPUs, packages, hashes, topology."""
    v = m.get("versions") or {}
    gpu = m.get("gpu") or {}
    rows = [("code", f"{m.get('code_dir')}: {_code_text(m.get('git') or {})}"),
            ("versions", f"python {m.get('python')}, torch {v.get('torch')}, cuda {v.get('cuda')}, "
                         f"nccl {v.get('nccl')}, slurm {v.get('slurm')}, hpcorch {v.get('hpcorch')}"),
            ("gpu", f"{gpu.get('count')} x {gpu.get('model')}, driver {gpu.get('driver')}" if gpu else None),
            ("packages", f"{len(m.get('packages') or {})} installed"),
            ("hashes", f"script {_h(m.get('script_sha256'))}, job {_h(m.get('job_sha256'))}, "
                       f"profile {m.get('profile')} {_h(m.get('profile_sha256'))}"),
            ("topology", m.get("topology_addr"))]
    title = (f"attempt {m.get('attempt')}: job {m.get('job_id')} ({m.get('scheduler')}, restart "
             f"{m.get('restart_count')}) on {m.get('nodes')}")
    return [title, *(f"  {key:<9} {value}" for key, value in rows if value)]


def attempts_lines(found: dict) -> list[str]:
    """``hpcorch manifest``: every attempt's manifest, then what changed between them."""
    if not found["manifests"]:
        return ["no manifest yet: one is written as each attempt starts"]
    lines = [line for data in found["manifests"] for line in manifest_lines(data)]
    return lines + [f"warning: {line}" for line in found["warnings"]]


def _section(title: str, lines: list[str]) -> list[str]:
    return [title, *(f"  {line}" for line in lines)] if lines else []


def diff_lines(result: dict) -> list[str]:
    """``hpcorch manifest --diff A B``: what may change the result, other fields, the code diff."""
    other = [f for f in result["fields"] if not f.startswith(("git.", "versions.", "python:"))]
    return [f"attempt {result['a']} -> attempt {result['b']}",
            *(_section("differs in what may change the result:", result["changes"])
              or ["same code, packages, versions and inputs"]),
            *_section("other fields:", other),
            *_section("code changes between the attempts:", result["code"])]


# ----- health, remote ---------------------------------------------------------------------------
def health_lines(report) -> list[str]:
    """``hpcorch health``: one line per check, the notes, then the summary."""
    return [*(check.line() for check in report.checks), *(f"note: {note}" for note in report.notes),
            report.summary()]


def connected_line(info: dict) -> str:
    """``hpcorch remote connect``: where, which hpcorch and Python, and the idle timeout."""
    return (f"connected to {info['host']} (hpcorch {info['version']}, {info['python']}); "
            f"idle timeout {duration(info['persist_s'])}")


def agents_lines(rows: list[dict]) -> list[str]:
    """``hpcorch remote status``: one line per running connection agent."""
    if not rows:
        return ["no connection agent is running"]
    lines = [f"{'host':<32} {'pid':>7}  {'since':<19} {'idle':>7} {'in':>10} {'out':>10} {'commands':>8}"]
    for r in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["since"]))
        lines.append(f"{r['host']:<32} {r['pid']:>7}  {since:<19} {duration(r['idle_s']):>7} "
                     f"{r['bytes_in']:>10} {r['bytes_out']:>10} {r['commands']:>8}")
    return lines


def disconnected_line(hosts: list[str] | bool) -> str:
    """``hpcorch remote disconnect``: the hosts closed (True: the profile's one), or none."""
    if not hosts:
        return "no connection was open"
    return "disconnected" if hosts is True else f"disconnected {', '.join(hosts)}"


# ----- sweeps ---------------------------------------------------------------------------------
def point_lines(rows: list[dict]) -> list[str]:
    """``hpcorch sweep --dry-run``'s point table: number, name, the values that vary, array."""
    columns = list(rows[0]) if rows else []
    return table([Column(c, number=c in ("point", "array")) for c in columns],
                 [[str(r[c]) for c in columns] for r in rows])


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def sweep_status_lines(info: dict) -> list[str]:
    """``hpcorch sweep status``: one aligned line per point."""
    keys = info["keys"]
    columns = [Column("#", True), *(Column(k.rsplit(".", 1)[-1]) for k in keys), Column("state"),
               Column("restarts", True), Column("step", True), Column("loss", True), Column("val loss", True),
               Column("tokens/s", True), Column("goodput", True), Column("job id")]
    rows = [[str(r["point"]), *(str(r[k]) for k in keys), r["state"] + (" (done)" if r["done"] else ""),
             str(r["restarts"]), _num(r["step"], ","), _num(r["final_loss"], ".4f"), _num(r["val_loss"], ".4f"),
             _num(r["tokens_per_s"], ",.0f"), percent(r["goodput"]), r["job_id"] or "-"] for r in info["rows"]]
    where = f"{info['host']}:{info['root']}" if info.get("host") else info["root"]  # a login node's sweep
    return [f"sweep {info['name']} ({where})", *table(columns, rows)]
