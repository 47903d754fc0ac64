"""The communication environment a profile's fabric needs: the one place that derives it.

NCCL (and AMD's RCCL, which reads the same ``NCCL_*`` names) finds InfiniBand on its own, but
which adapters and ports to use, RoCE's GID index, and the libfabric provider and settings its
network plugin (aws-ofi-nccl / aws-ofi-rccl) needs on Slingshot or EFA are site facts the
profile already states. :func:`environment` turns them into variables; the plan puts the
profile's ``environment.variables`` and then the job's ``environment`` over them, so anything
written explicitly wins. The tables are data on purpose: the topology work extends them here.

Sources (public documentation, checked for this module):

* Slingshot: HPE's recommended NCCL/RCCL settings (HewlettPackard/shs-ccl-docs ``ccl_env.sh``),
  which NERSC (Perlmutter), CSCS (Alps) and LUMI document in the same shape: the ``cxi``
  libfabric provider, ``hsn`` interfaces, GPUDirect up to the host bridge (``PHB``), cross-NIC
  rings, and the CXI memory-registration settings that avoid hangs with CUDA/HIP allocations.
* AMD GPUs on Slingshot (LUMI, HPE): RCCL is given the four ``hsn0..3`` interfaces by name, and
  ``HSA_FORCE_FINE_GRAIN_PCIE=1`` for peer access over PCIe.
* EFA: AWS's NCCL guides set ``FI_PROVIDER=efa`` and ``FI_EFA_USE_DEVICE_RDMA=1`` (GPUDirect RDMA
  on p4d/p5-class instances); the aws-ofi-nccl plugin sets its other defaults itself.
* Omni-Path: NCCL uses its verbs transport on the hfi1 adapters, so only the adapter list
  (``NCCL_IB_HCA=hfi1_0:1``) is derived; no plugin is assumed.
* Ethernet: nothing; NCCL's socket transport picks interfaces by itself.
* Any fabric: ``network.socket_ifname`` becomes NCCL_SOCKET_IFNAME (over the fabric's own) and
  ``network.nccl_topo_file`` NCCL_TOPO_FILE: both are in NCCL's "System configuration" section.

NCCL_NET_GDR_LEVEL, derived for Slingshot, is listed in NCCL's "Debugging" section; HPE's
Slingshot guide sets it for the cxi provider, so it stays here (a profile may not set it itself:
:data:`hpcorch.spec.placement.NCCL_DEBUGGING`).
"""
from __future__ import annotations

from hpcorch.spec.network import VERBS_FABRICS
from hpcorch.spec.profile import ClusterProfile, NodeGroup

# Variables each fabric needs whatever the hardware, as NCCL/libfabric read them.
_FABRIC_ENV: dict[str, dict[str, str]] = {
    "slingshot": {
        "FI_PROVIDER": "cxi",
        "NCCL_SOCKET_IFNAME": "hsn",
        "NCCL_NET_GDR_LEVEL": "PHB",
        "NCCL_CROSS_NIC": "1",
        "FI_CXI_DISABLE_HOST_REGISTER": "1",
        "FI_MR_CACHE_MONITOR": "userfaultfd",
        "FI_CXI_DEFAULT_CQ_SIZE": "131072",
    },
    "efa": {
        "FI_PROVIDER": "efa",
        "FI_EFA_USE_DEVICE_RDMA": "1",
    },
}

# Additions (or replacements) for one GPU vendor on one fabric.
_VENDOR_ENV: dict[tuple[str, str], dict[str, str]] = {
    ("slingshot", "amd"): {
        "NCCL_SOCKET_IFNAME": "hsn0,hsn1,hsn2,hsn3",
        "HSA_FORCE_FINE_GRAIN_PCIE": "1",
    },
}


def environment(profile: ClusterProfile, groups: list[NodeGroup] | None = None) -> dict[str, str]:
    """The variables the profile's fabric needs, for a job on the node ``groups`` it may land on
    (their GPUs' vendor picks vendor-specific ones; without groups, only what every node shares)."""
    net = profile.network
    env: dict[str, str] = {}
    if net.fabric in VERBS_FABRICS and net.infiniband and net.infiniband.hcas:
        env["NCCL_IB_HCA"] = ib_hca(net.infiniband.hcas, net.infiniband.ports)
    if net.fabric == "roce" and net.infiniband and net.infiniband.gid_index is not None:
        env["NCCL_IB_GID_INDEX"] = str(net.infiniband.gid_index)
    env.update(_FABRIC_ENV.get(net.fabric, {}))
    vendor = gpu_vendor(groups) if groups is not None else None
    if vendor:
        env.update(_VENDOR_ENV.get((net.fabric, vendor), {}))
    if net.socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = net.socket_ifname
    if net.nccl_topo_file:
        env["NCCL_TOPO_FILE"] = net.nccl_topo_file
    return env


def ib_hca(hcas: list[str], ports: int) -> str:
    """NCCL_IB_HCA in NCCL's syntax: every adapter with each of its ports, as exact names
    (``=mlx5_0:1,mlx5_1:1``): without the ``=``, NCCL reads ``mlx5_1`` as a prefix that also
    selects mlx5_10 to mlx5_19, the storage adapters of a DGX-class node."""
    return "=" + ",".join(f"{hca}:{port}" for hca in hcas for port in range(1, ports + 1))


def gpu_vendor(groups: list[NodeGroup]) -> str | None:
    """The vendor of the groups' GPUs when all their GPU nodes agree, else None."""
    vendors = {g.spec.gpus.vendor for g in groups if g.spec.gpus.count}
    return vendors.pop() if len(vendors) == 1 else None
