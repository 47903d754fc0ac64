"""The pre-flight's collective part: the nodes exchange their local verdicts, then time a
short all-reduce among one task per node (NCCL on GPUs, gloo on CPU).

The only module of :mod:`hpcorch.batch.health` that uses torch, and only inside functions: the
local checks and ``hpcorch health`` never pay for importing it.

Rendezvous comes from Slurm's environment: rank ``SLURM_PROCID`` of ``SLURM_NTASKS`` (the
step runs one task per node), the step's first host as the address (resolved as the training
ranks resolve theirs), and a port derived from ``SLURM_JOB_ID`` in 10000-19999, apart from
the 20000-60000 that submitit draws the training's port from.
"""
from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from hpcorch.batch.health.criteria import Criteria
from hpcorch.batch.health.report import Check, NodeReport

PORT_BASE, PORT_SPAN = 10000, 10000


@dataclass(frozen=True)
class Rendezvous:
    rank: int
    world: int
    addr: str
    port: int


def port_for(job_id: str) -> int:
    """The pre-flight's TCP port for Slurm job ``job_id``: every node computes the same one."""
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def rendezvous(env: Mapping[str, str] | None = None, port: int | None = None,
               addr: str | None = None) -> Rendezvous:
    """Rank, world size, address and port of this pre-flight task from Slurm's variables;
    ``port`` and ``addr`` override the derived ones (tests on one machine)."""
    from hpcorch.spec.units import expand_hostlist

    env = os.environ if env is None else env
    rank = int(env.get("SLURM_PROCID", "0"))
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if addr is None:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        from hpcorch.batch.task import resolve_address

        addr = resolve_address(expand_hostlist(nodelist)[0])
    return Rendezvous(rank, world, addr, port or port_for(env.get("SLURM_JOB_ID", "0")))


def busbw_gbps(nbytes: int, seconds: float, world: int) -> float:
    """All-reduce bus bandwidth in GB/s, as nccl-tests defines it: algorithm bandwidth
    (bytes / time) times 2(n-1)/n, the share of the data each link carries in a ring."""
    return nbytes / seconds * 2 * (world - 1) / world / 1e9


def exchange_and_measure(crit: Criteria, rdv: Rendezvous, report: NodeReport, timeout_s: float) -> None:
    """Join the other nodes, share each node's verdict (``report.peers``), and if every node
    passed its local checks, add the ``allreduce.busbw`` check to ``report``. A node that
    cannot join in ``timeout_s`` gets a failed ``allreduce.join`` check (which node is at
    fault is then unknown: the one that never came has no report, or a timed-out one)."""
    import torch
    import torch.distributed as dist

    from hpcorch.train.distributed import abandon, shutdown

    use_cuda = bool(crit.gpus) and torch.cuda.is_available()
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, init_method=f"tcp://{rdv.addr}:{rdv.port}", rank=rdv.rank,
                                world_size=rdv.world, timeout=datetime.timedelta(seconds=max(1.0, timeout_s)),
                                device_id=device if use_cuda else None)
    except Exception as exc:
        report.add(Check("allreduce.join", False, f"could not meet the other nodes ({rdv.world} in all) at "
                         f"{rdv.addr}:{rdv.port} within {timeout_s:.0f} s: {_first_line(exc)}"))
        return
    try:
        peers: list = [None] * rdv.world
        dist.all_gather_object(peers, {"node": report.node, "ok": report.ok, "failed": report.failed})
        report.peers = {p["node"]: p["ok"] for p in peers}
        bad = [f"{p['node']} ({', '.join(p['failed'])})" for p in peers if not p["ok"]]
        if bad:
            report.notes.append(f"all-reduce not measured: failed local checks on {'; '.join(bad)}")
        else:
            report.add(_measure(crit, rdv.world, device, backend))
        shutdown()
    except Exception as exc:
        abandon()
        report.add(Check("allreduce.join", False, f"the collective failed: {_first_line(exc)}"))


def _measure(crit: Criteria, world: int, device, backend: str) -> Check:
    import torch
    import torch.distributed as dist

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    numel = crit.allreduce_mb * 2**20 // 4
    data = torch.ones(numel, dtype=torch.float32, device=device)
    dist.all_reduce(data)  # warm-up: connections, buffers and (NCCL) rings are set up here
    sync()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(crit.iterations):
        dist.all_reduce(data)
    sync()
    # Every node reports the slowest node's time: the collective is as fast as its slowest member.
    took = torch.tensor([(time.perf_counter() - start) / crit.iterations], dtype=torch.float64, device=device)
    dist.all_reduce(took, op=dist.ReduceOp.MAX)
    busbw = busbw_gbps(numel * 4, float(took.item()), world)
    floor = crit.min_busbw_gbps
    expected = f"expected >= {floor:g} GB/s" if floor else "no floor set (health.min_busbw_gbps)"
    return Check("allreduce.busbw", busbw >= floor,
                 f"{busbw:.3f} GB/s bus bandwidth ({world} nodes, {backend}, {crit.allreduce_mb} MiB x "
                 f"{crit.iterations}); {expected}", round(busbw, 4), floor)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
