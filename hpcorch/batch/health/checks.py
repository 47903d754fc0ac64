"""The local checks of one node: GPUs, InfiniBand ports, host memory, disk and /dev/shm.

Everything is read below a system root (``--root``, else ``HPCORCH_SYSTEM_ROOT``, else ``/``):
``ROOT/dev/nvidia<N>`` (AMD: ``ROOT/dev/dri/renderD<128+N>``), ``ROOT/sys/class/infiniband``
and ``ROOT/dev/shm``, so tests and the dev cluster's emulated nodes point it at a fake tree.
GPU health beyond the count (free memory, ECC, retired or remapped pages, clock throttling)
needs NVML through ``pynvml`` (``pip install nvidia-ml-py``), and only on the real root: a
fake root's GPUs are not the ones NVML would see. No torch here: this runs in seconds on a
node that may be broken.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from hpcorch.batch.health.criteria import Criteria
from hpcorch.batch.health.report import Check, NodeReport
from hpcorch.util.diskspace import free_bytes

ROOT_ENV = "HPCORCH_SYSTEM_ROOT"
GB = 1e9  # decimal, as `df -H` and the floors count
_NVIDIA_DEV = re.compile(r"nvidia([0-9]+)")
_AMD_DEV = re.compile(r"renderD([0-9]+)")
_AMD_RENDER_BASE = 128  # renderD128 is the first GPU
# Which variables restrict the GPUs a process sees, per vendor, then Slurm's own record.
_VISIBLE_ENV = {"nvidia": ("CUDA_VISIBLE_DEVICES",),
                "amd": ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")}
_SLURM_GPUS_ENV = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
# NVML clock event reasons that mean a fault or a cooling problem (idle, application clocks,
# the software power cap and sync boost are normal): HW slowdown, SW thermal, HW thermal, power brake.
_BAD_THROTTLE = {0x8: "hardware slowdown", 0x20: "software thermal slowdown",
                 0x40: "hardware thermal slowdown", 0x80: "hardware power brake"}


def system_root(root: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Path:
    """``root``, else ``$HPCORCH_SYSTEM_ROOT``, else ``/``."""
    env = os.environ if env is None else env
    return Path(root or env.get(ROOT_ENV) or "/")


def visible_gpus(vendor: str, env: Mapping[str, str]) -> list[str] | None:
    """The GPU ids this process may use (indices or UUIDs), from the vendor's variable, else
    Slurm's allocation; None: nothing restricts them."""
    for name in _VISIBLE_ENV[vendor] + _SLURM_GPUS_ENV:
        if name in env:
            return [x.strip() for x in env[name].split(",") if x.strip()]
    return None


def device_indices(root: Path, vendor: str) -> set[int]:
    """The GPU device files under ``root`` by index (``nvidia3`` -> 3; ``renderD130`` -> 2)."""
    folder, pattern, base = ((root / "dev", _NVIDIA_DEV, 0) if vendor == "nvidia"
                             else (root / "dev" / "dri", _AMD_DEV, _AMD_RENDER_BASE))
    try:
        names = os.listdir(folder)
    except OSError:
        return set()
    return {int(m[1]) - base for name in names if (m := pattern.fullmatch(name)) and int(m[1]) >= base}


def _load_nvml():
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def check_gpus(crit: Criteria, root: Path, env: Mapping[str, str], report: NodeReport) -> None:
    """The GPU count (and, with NVML on the real root, each GPU's health) into ``report``."""
    if not crit.gpus:
        report.notes.append("no GPUs expected: GPU checks skipped")
        return
    visible = visible_gpus(crit.gpu_vendor, env)
    nvml = _load_nvml() if crit.gpu_vendor == "nvidia" else None
    if nvml is not None and root == Path("/"):
        report.gpu_source = "nvml"
        _nvml_checks(nvml, crit, visible, report)
        return
    if crit.gpu_vendor == "nvidia":
        why = "pynvml is not importable (pip install nvidia-ml-py)" if nvml is None else \
            f"the system root is {root}, not the real one"
        report.notes.append(f"NVML not used: {why}; GPUs counted from device files only")
    report.gpu_source = "device files"
    present = device_indices(root, crit.gpu_vendor)
    where = root / "dev" / ("nvidia*" if crit.gpu_vendor == "nvidia" else "dri/renderD*")
    if visible is None:
        found, detail = len(present), f"{len(present)} device files {where}"
    elif all(v.isdigit() for v in visible):
        missing = [v for v in visible if int(v) not in present]
        found = len(visible) - len(missing)
        detail = f"{found} of the {len(visible)} allocated GPUs ({','.join(visible)}) have device files in {where}"
        if missing:
            detail += f"; missing: {','.join(missing)}"
    else:  # UUIDs cannot be matched to files: the smaller of what is allowed and what exists
        found = min(len(visible), len(present))
        detail = f"{len(visible)} GPUs allocated by id, {len(present)} device files in {where}"
    ok = found >= crit.gpus
    report.add(Check("gpus", ok, f"{detail}; expected {crit.gpus}", found, crit.gpus))


def _nvml_checks(nv, crit: Criteria, visible: list[str] | None, report: NodeReport) -> None:
    try:
        nv.nvmlInit()
    except Exception as exc:  # no driver, or a driver/library mismatch: the GPUs are not usable
        report.add(Check("gpus", False, f"NVML failed to start: {exc}", 0, crit.gpus))
        return
    try:
        wanted = visible if visible is not None else [str(i) for i in range(nv.nvmlDeviceGetCount())]
        handles, missing = {}, []
        for ident in wanted:
            try:
                handles[ident] = (nv.nvmlDeviceGetHandleByIndex(int(ident)) if ident.isdigit()
                                  else nv.nvmlDeviceGetHandleByUUID(ident))
            except Exception:
                missing.append(ident)
        detail = f"{len(handles)} of {len(wanted)} GPUs answer NVML" + (
            f"; missing: {','.join(missing)}" if missing else "")
        report.add(Check("gpus", len(handles) >= crit.gpus, f"{detail}; expected {crit.gpus}",
                         len(handles), crit.gpus))
        unsupported: set[str] = set()
        for ident, handle in handles.items():
            report.add(_gpu_health(nv, f"gpu{ident}", handle, crit, unsupported))
        if unsupported:
            report.notes.append(f"NVML does not support on these GPUs: {', '.join(sorted(unsupported))}")
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def _gpu_health(nv, name: str, h, crit: Criteria, unsupported: set[str]) -> list[Check]:
    """One GPU's memory, ECC, page and clock checks; a query the GPU does not support is noted,
    not failed (consumer GPUs have no ECC; A100 and later replace page retirement by remapping)."""
    out = []

    def query(what: str, fn, *args):
        try:
            return getattr(nv, fn)(*args)
        except Exception:
            unsupported.add(what)
            return None

    mem = query("memory info", "nvmlDeviceGetMemoryInfo", h)
    if mem is not None and mem.total:
        share = mem.free / mem.total
        out.append(Check(f"{name}.memory", share >= crit.min_gpu_free_fraction,
                         f"{mem.free / GB:.1f} of {mem.total / GB:.1f} GB free ({share:.0%}); expected "
                         f">= {crit.min_gpu_free_fraction:.0%} (another process holds this GPU?)",
                         round(share, 4), crit.min_gpu_free_fraction))
    ecc = query("ECC counters", "nvmlDeviceGetTotalEccErrors", h, getattr(nv, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                getattr(nv, "NVML_VOLATILE_ECC", 0))
    if ecc is not None:
        out.append(Check(f"{name}.ecc", ecc == 0, f"{ecc} volatile uncorrectable ECC errors; expected 0", ecc, 0))
    pending = query("retired pages", "nvmlDeviceGetRetiredPagesPendingStatus", h)
    if pending is not None:
        out.append(Check(f"{name}.retired_pages", not pending,
                         "page retirement pending (needs a GPU reset)" if pending else "no retirement pending",
                         bool(pending), False))
    rows = query("row remapping", "nvmlDeviceGetRemappedRows", h)
    if rows is not None:
        _, uncorrectable, is_pending, failed = rows
        bad = bool(is_pending) or bool(failed)
        out.append(Check(f"{name}.remapped_rows", not bad,
                         f"{uncorrectable} rows remapped for uncorrectable errors; pending: {bool(is_pending)}, "
                         f"remapping failed: {bool(failed)}", bool(is_pending or failed), False))
    fn = "nvmlDeviceGetCurrentClocksEventReasons" if hasattr(nv, "nvmlDeviceGetCurrentClocksEventReasons") \
        else "nvmlDeviceGetCurrentClocksThrottleReasons"
    reasons = query("clock event reasons", fn, h)
    if reasons is not None:
        bad = [text for bit, text in _BAD_THROTTLE.items() if reasons & bit]
        out.append(Check(f"{name}.clocks", not bad, "clocks slowed: " + ", ".join(bad) if bad
                         else "no hardware or thermal slowdown", hex(reasons), None))
    return out


def check_ib(crit: Criteria, root: Path) -> list[Check]:
    """Each listed HCA port: ``state`` must say ``4: ACTIVE``; ``rate`` at least the expected
    Gb/s when ``ib_rate_gbps`` is set (a link that trained at fewer lanes or a lower speed)."""
    out = []
    for hca, port in crit.ports():
        folder = root / "sys" / "class" / "infiniband" / hca / "ports" / str(port)
        name = f"ib.{hca}/{port}"
        if not folder.is_dir():
            out.append(Check(f"{name}.state", False, f"no such port: {folder} is missing", None, "4: ACTIVE"))
            continue
        state, phys = _read(folder / "state"), _read(folder / "phys_state")
        active = state.split(":")[0].strip() == "4"
        detail = f"{state or 'unreadable'}" + (f" ({phys})" if phys else "")
        out.append(Check(f"{name}.state", active, detail + ("" if active else "; expected 4: ACTIVE"),
                         state, "4: ACTIVE"))
        if crit.ib_rate_gbps:
            rate_text = _read(folder / "rate")
            try:
                rate = float(rate_text.split()[0])
            except (IndexError, ValueError):
                rate = None
            ok = rate is not None and rate >= crit.ib_rate_gbps
            out.append(Check(f"{name}.rate", ok, f"{rate_text or 'unreadable'}; expected "
                             f">= {crit.ib_rate_gbps} Gb/s", rate, crit.ib_rate_gbps))
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def check_host(crit: Criteria, root: Path, run_dir: Path) -> list[Check]:
    """Available memory, free space of the run directory's file system and of ``ROOT/dev/shm``."""
    import psutil

    out = []
    available = psutil.virtual_memory().available / GB
    out.append(_floor("host.memory", "memory available", available, crit.min_free_memory_gb))
    out.append(_floor("host.disk", f"free on {run_dir}'s file system", free_bytes(run_dir) / GB,
                      crit.min_free_disk_gb))
    shm = root / "dev" / "shm"
    if not shm.is_dir():
        out.append(Check("host.shm", False, f"{shm} is missing (NCCL and the data loaders need it)",
                         None, crit.min_shm_gb))
    else:
        out.append(_floor("host.shm", f"free in {shm}", free_bytes(shm) / GB, crit.min_shm_gb))
    return out


def _floor(name: str, what: str, value: float, floor: float) -> Check:
    ok = value >= floor
    return Check(name, ok, f"{value:.2f} GB {what}; expected >= {floor:g} GB", round(value, 3), floor)


def _guarded(report: NodeReport, name: str, fn, *args) -> None:
    """Run one group of checks; an error inside it (an unreadable file, a broken library) is
    that group's failure, never the end of the pre-flight: the report must still be written."""
    try:
        result = fn(*args)
    except Exception as exc:
        report.add(Check(name, False, f"the check itself failed: {type(exc).__name__}: {exc}"))
        return
    if result is not None:
        report.add(result)


def node_name(env: Mapping[str, str] | None = None) -> str:
    """This node's name as Slurm knows it (``SLURMD_NODENAME``), else the short host name."""
    import socket

    env = os.environ if env is None else env
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def check_node(criteria: Criteria, run_dir: str | os.PathLike | None = None,
               root: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
               report: NodeReport | None = None) -> NodeReport:
    """Run every local check of ``criteria`` on this node and return its report (not written).

    ``run_dir``: whose file system must have room (default: the current folder); ``root``:
    the system root (default ``$HPCORCH_SYSTEM_ROOT`` or ``/``); ``env``: the environment that
    says which GPUs are this process's (default ``os.environ``).
    """
    env = os.environ if env is None else env
    base = system_root(root, env)
    report = report or NodeReport(node=node_name(env))
    report.root, report.criteria = str(base), criteria.to_args()
    _guarded(report, "gpus", check_gpus, criteria, base, env, report)
    _guarded(report, "ib", check_ib, criteria, base)
    _guarded(report, "host", check_host, criteria, base, Path(run_dir or ".").absolute())
    return report.finish()
