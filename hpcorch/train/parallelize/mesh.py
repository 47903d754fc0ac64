"""The device mesh of an ``nd`` layout and its sub-meshes.

One :class:`~torch.distributed.device_mesh.DeviceMesh` of four named dimensions, outermost
first, as :mod:`hpcorch.spec.parallel` orders them: ``pp x dp_replicate x dp_shard x tp``. tp is
innermost (consecutive ranks, one node's NVLink domain), pp outermost (stages across nodes).
Every parallelism of the trainer works on a slice of this one mesh, so DTensors from tensor
parallelism and FSDP2 compose (FSDP2 needs its mesh and the tp mesh to share a root).

The plain data-parallel layouts (``Layout.kind`` "ddp" and "fsdp") build no mesh: they keep the
code paths they had before meshes (DDP, FSDP2 over the default group), number for number.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from hpcorch.spec.parallel import MESH_DIMS, Layout


def build_mesh(layout: Layout, device: torch.device) -> DeviceMesh | None:
    """The mesh of ``layout`` on this rank's device type; None for the ddp and fsdp kinds."""
    if layout.kind in ("ddp", "fsdp"):
        return None
    if layout.world_size != dist.get_world_size():
        raise ValueError(f"layout {layout.describe()} is for {layout.world_size} ranks, "
                         f"the process group has {dist.get_world_size()}")
    return init_device_mesh(device.type, tuple(layout.sizes[d] for d in MESH_DIMS), mesh_dim_names=MESH_DIMS)


def dp_mesh(mesh: DeviceMesh, layout: Layout) -> DeviceMesh | None:
    """The mesh FSDP2 shards over: 2-D ``(dp_replicate, dp_shard)`` (HSDP: replicas of shards)
    when there are replicas, else 1-D ``dp_shard``; None without data parallelism. A
    ``dp_replicate``-only layout is HSDP with shards of one rank: a replica per rank, whose
    gradients FSDP2 all-reduces (DDP itself does not compose with tp or pp)."""
    if layout.dp == 1:
        return None
    if layout.dp_replicate > 1:
        return mesh["dp_replicate", "dp_shard"]
    return mesh["dp_shard"]


def tp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The tensor-parallel ranks of this rank (consecutive ranks, one node)."""
    return mesh["tp"]


def pp_group(mesh: DeviceMesh) -> dist.ProcessGroup:
    """The process group of this rank's pipeline: one rank per stage, same dp and tp coordinates."""
    return mesh.get_group("pp")


def pp_rank(mesh: DeviceMesh) -> int:
    """This rank's position along the pipeline (which stages it holds: ``Layout.stage_ids``)."""
    return mesh.get_local_rank("pp")


def edge_stage_group(layout: Layout, rank: int) -> dist.ProcessGroup | None:
    """The group of the two ranks holding the first and the last pipeline stage for this rank's
    dp and tp coordinates (they hold the two copies of the tied embedding); None for a rank in
    between. A collective for every rank: all create every such group, in the same order."""
    inner = layout.world_size // layout.pp  # ranks per pipeline position (pp is outermost)
    mine = None
    for offset in range(inner):
        ranks = [offset, (layout.pp - 1) * inner + offset]
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return mine
