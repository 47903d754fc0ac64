"""torch.distributed from the environment.

Every launcher sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT itself:
``hpcorch train``'s local launcher and submitit's ``TorchDistributedEnvironment.export()``.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: int = 300) -> DistEnv:
    """Join the process group; NCCL on CUDA, gloo on CPU. A dead peer raises after ``timeout_s``."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if backend == "nccl" else None)
    return DistEnv(rank, world, local_rank, device, backend)


def all_agree(ok: bool, device: torch.device) -> bool:
    """True if every rank says ``ok`` (one MIN all-reduce; every rank must call it); ``ok``
    itself outside a process group. How ranks stop together when one of them cannot go on."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor(int(ok), dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def first_to_fail(ok: bool, rank: int, device: torch.device, own: bool = True) -> int | None:
    """None if every rank says ``ok``; else the lowest rank that failed on its own (``own``:
    it has an error line of its own to say), or the world size when every failing rank only
    saw another's failure. One MIN all-reduce; every rank must call it. Several ranks may fail
    alike (a full disk under all of them): the lowest one says why, once, not once per rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None if ok else (rank if own else 1)
    world = dist.get_world_size()
    flag = torch.tensor(2 * world if ok else (rank if own else world), dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    first = int(flag.item())
    return None if first == 2 * world else first


def node_first(make, local_rank: int, device: torch.device):
    """``make()`` on each node's first rank, then (after every node's first rank is through)
    on the others, which find what the first one left behind (a cache file) instead of
    redoing it. If the first rank fails, the others still run ``make()`` and fail alike, so
    every rank ends with the same error rather than waiting in a collective."""
    if local_rank != 0:
        all_agree(True, device)
        return make()
    try:
        result = make()
    except BaseException:
        all_agree(False, device)
        raise
    all_agree(True, device)
    return result


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (one all-gather; every rank must call it); ``[obj]``
    outside a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# How long the group's worker threads get to let go of finished work before it is destroyed.
_SETTLE_S = 0.1


def shutdown() -> None:
    """Leave together: a rank that tears gloo down while a peer is still talking aborts it."""
    if dist.is_initialized():
        dist.barrier()
        _let_workers_settle()
        dist.destroy_process_group()


def _let_workers_settle() -> None:
    """Sleep briefly, without the GIL. A gloo worker thread drops the last reference to a
    finished collective (and its Python-owned tensors, which needs the GIL) only after the
    caller has seen it complete. A group destroyed in that window (by destroy_process_group
    or by freeing a DDP reducer, DeviceMesh or checkpoint group, always with the GIL held)
    joins that thread while it waits for the GIL: the rank hangs after a successful run
    (seen in CI: a gloo worker in ``decref``, the main thread in ``~ProcessGroupGloo``)."""
    time.sleep(_SETTLE_S)


def abandon() -> None:
    """Leave the process group after a clear error, without waiting for peers that may never
    come: a process that exits with its gloo group still alive can abort (SIGABRT) in gloo's
    destructors, which would hide the one-line error behind exit code 134."""
    if dist.is_initialized():
        _let_workers_settle()
        try:
            dist.destroy_process_group()
        except Exception:  # the peers may be gone already; the error line is what matters
            pass
