"""The parallel layout against the cluster: where the mesh's ranks land, and what that asks of the nodes.

Ranks are placed block-wise (Slurm's default distribution): node ``n`` runs ranks
``n * tasks_per_node ... (n + 1) * tasks_per_node - 1``. With ``tp`` innermost in the mesh
(:mod:`hpcorch.spec.parallel`), a tensor-parallel group is consecutive ranks, so it stays on one
node exactly when ``tp`` divides ``tasks_per_node``; pipeline stages, outermost, span nodes.
"""
from __future__ import annotations

from collections.abc import Callable

from hpcorch.errors import PlanError
from hpcorch.spec.job import JobSpec
from hpcorch.spec.noderange import show
from hpcorch.spec.parallel import Layout
from hpcorch.spec.profile import NodeGroup

# Interconnects over which tensor parallelism's per-layer all-reduces are slow.
SLOW_LINKS = ("pcie", "none")


def check_layout(job: JobSpec, groups: list[NodeGroup], fail: Callable[[str, str], PlanError],
                 warnings: list[str]) -> None:
    """Refuse a tensor-parallel group that would span nodes; warn when it would run over GPUs
    without a fast GPU-to-GPU link (``groups``: the node types the job may land on)."""
    layout, res = job.layout, job.resources
    if layout.tp == 1:
        return
    if res.tasks_per_node % layout.tp:
        raise fail("trainer.parallel.tp", f"expected a divisor of resources.tasks_per_node "
                   f"({res.tasks_per_node} ranks per node): a tensor-parallel group must stay inside "
                   f"one node (it all-reduces every layer over the node's GPU links), got {layout.tp}")
    if not res.gpus_per_node:
        return  # CPU ranks of one node share memory
    slow = sorted({f"{g.node_type} ({g.spec.gpus.interconnect})" for g in groups
                   if g.spec.gpus.count and g.spec.gpus.interconnect in SLOW_LINKS})
    if slow:
        warnings.append(f"trainer.parallel.tp {layout.tp} on GPUs without NVLink or xGMI: node type "
                        f"{', '.join(slow)}; tensor parallelism all-reduces every layer's activations, "
                        f"expect it to be slow (prefer dp_shard / FSDP there)")


def node_coords(layout: Layout, node: int, tasks_per_node: int) -> dict[str, list[int]]:
    """The mesh coordinates the ranks of ``node`` hold: pp stage, data-parallel rank (which share
    of the batch), tp rank; only the dimensions above 1."""
    ranks = range(node * tasks_per_node, (node + 1) * tasks_per_node)
    dims = {"pp": layout.pp, "dp": layout.dp, "tp": layout.tp}
    found: dict[str, set[int]] = {d: set() for d, size in dims.items() if size > 1}
    for rank in ranks:
        c = layout.coords(rank)
        here = {"pp": c["pp"], "dp": layout.dp_rank(rank), "tp": c["tp"]}
        for d in found:
            found[d].add(here[d])
    return {d: sorted(v) for d, v in found.items()}


def layout_summary(job: JobSpec) -> dict:
    """The layout for ``hpcorch plan --json``: mesh sizes, the batch split, every pipeline
    stage's layers (first and last, inclusive) and every node's ranks and coordinates."""
    layout, res, tr = job.layout, job.resources, job.trainer
    stages = tr.parallel.stage_layers(tr.model.layers)
    info = {
        "mesh": layout.describe(),
        "kind": layout.kind,
        "sizes": layout.sizes,
        "dp": layout.dp,
        "accumulation": layout.accumulation,
        "micro_batch": layout.micro_batch,
        "pp_schedule": tr.parallel.pp_schedule if layout.pp > 1 else None,
        "stages": [{"stage": s, "pp_rank": s % layout.pp, "layers": [r.start, r.stop - 1]}
                   for s, r in enumerate(stages)],
        "nodes": [{"node": n, "ranks": [n * res.tasks_per_node, (n + 1) * res.tasks_per_node - 1],
                   **node_coords(layout, n, res.tasks_per_node)} for n in range(res.nodes)],
    }
    if tr.parallel.tp > 1:
        info["sequence_parallel"] = tr.parallel.sequence_parallel
        info["loss_parallel"] = tr.parallel.loss_parallel
    return info


def node_range_notes(job: JobSpec) -> tuple[list[str], list[str]]:
    """For a job with a node range: a note listing the counts the trainer can run on (data
    parallelism and accumulation on each), and a warning when counts of the range as written
    cannot run (an allocation of one of those runs on the largest valid count below it and
    hands the other nodes back). ``([], [])`` for one node count."""
    res = job.resources
    if not res.is_range and job.nodes_asked == (res.nodes_min, res.nodes):
        return [], []
    asked = show(*job.nodes_asked)
    if job.program is not None:
        return [f"resources.nodes {res.nodes_directive}: the program runs on the node count Slurm gives "
                "(SLURM_JOB_NUM_NODES)"], []
    layouts = {n: job.layout_on(n) for n in job.node_counts}
    each = ", ".join(f"{n} (dp {lay.dp}, accumulation {lay.accumulation})" for n, lay in layouts.items())
    notes = [f"resources.nodes {asked}: the trainer can run on {each}; global_batch "
             f"{job.trainer.global_batch} on every count"]
    bad = [n for n in range(job.nodes_asked[0], job.nodes_asked[1] + 1) if n not in layouts]
    warnings = []
    if bad:
        warnings.append(f"resources.nodes {asked}: the trainer cannot run on {_counts(bad)} nodes "
                        f"({job.node_refusals.get(bad[0], 'its layout')}); Slurm is asked "
                        f"for {res.nodes_directive}, and an allocation of a count between runs on the largest "
                        f"valid count below it, handing the other nodes back")
    return notes, warnings


def _counts(counts: list[int]) -> str:
    """``1, 3 and 5``."""
    words = [str(n) for n in counts]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
