"""The parallel layout of a training job: ``trainer.parallel`` and what it resolves to.

A layout is a device mesh of four dimensions, outermost first, as torchtitan orders them::

    pp  x  dp_replicate  x  dp_shard  x  tp

``tp`` is innermost, so a tensor-parallel group is consecutive ranks (one node's GPUs, which
share NVLink); ``pp`` is outermost, so pipeline stages sit on different nodes. Data parallelism
is ``dp_replicate x dp_shard`` (DDP-style replicas of FSDP-style shards: HSDP when both are
above 1). ``trainer.sharding`` stays as the shorthand for the dimension that fills the world:
``ddp`` fills ``dp_replicate``, ``fsdp`` fills ``dp_shard``.

Pure Python and torch-free: ``hpcorch plan`` resolves and prints the layout on the login node;
the trainer builds its mesh from the same :class:`Layout`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from hpcorch.spec.schema import Invalid, check_positive

PP_SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass
class ParallelSpec:
    """``trainer.parallel``; every default keeps a plain data-parallel job as it was."""

    dp_replicate: int | None = None  # None: filled from the world size when sharding is ddp
    dp_shard: int | None = None      # None: filled from the world size when sharding is fsdp
    tp: int = 1                      # tensor parallel (inside a node)
    pp: int = 1                      # pipeline stages' ranks (across nodes)
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    pp_microbatches: int | None = None  # default: the accumulation steps of the global batch
    pp_stages_per_rank: int | None = None  # default: 2 for interleaved_1f1b, else 1
    pp_split: list[int] | None = None  # first layer of every stage after the first
    sequence_parallel: bool = False  # shard norms and dropout over the sequence (needs tp > 1)
    loss_parallel: bool = True       # with tp > 1: the output layer stays sharded on the vocabulary

    def __post_init__(self):
        check_positive(self, "dp_replicate", "dp_shard", "tp", "pp", "pp_microbatches", "pp_stages_per_rank")
        if self.pp_stages_per_rank not in (None, 1) and self.pp_schedule != "interleaved_1f1b":
            raise Invalid("pp_stages_per_rank", f"expected 1 for schedule {self.pp_schedule!r} "
                                                "(only interleaved_1f1b holds several stages per rank)")
        if self.pp_split is not None:
            if any(not isinstance(i, int) or isinstance(i, bool) for i in self.pp_split):
                raise Invalid("pp_split", f"expected a list of layer indices, got {self.pp_split!r}")
            if any(b <= a for a, b in pairwise(self.pp_split)) or (self.pp_split and self.pp_split[0] < 1):
                raise Invalid("pp_split", f"expected increasing layer indices above 0, got {self.pp_split}")

    @property
    def stages_per_rank(self) -> int:
        if self.pp_stages_per_rank is not None:
            return self.pp_stages_per_rank
        return 2 if self.pp_schedule == "interleaved_1f1b" and self.pp > 1 else 1

    @property
    def num_stages(self) -> int:
        return self.pp * self.stages_per_rank if self.pp > 1 else 1

    def check_model(self, layers: int, heads: int, vocab: int, seq_len: int | None = None,
                    kv_heads: int | None = None) -> None:
        """What the layout needs of the model: raises :class:`Invalid` (key under ``parallel``).
        ``kv_heads``: a model with fewer key/value heads than query heads (grouped-query
        attention): tp splits those too, so it must divide them.
        The ``pp_*`` keys are ignored when ``pp`` is 1 (a pipelined job may run unpipelined)."""
        if kv_heads is not None and kv_heads % self.tp:
            raise Invalid("parallel.tp", f"expected a divisor of the model's {kv_heads} kv_heads (each rank "
                                         f"takes whole key/value heads), got {self.tp}")
        if heads % self.tp:
            raise Invalid("parallel.tp", f"expected a divisor of the model's {heads} heads "
                                         f"(each rank takes whole heads), got {self.tp}")
        if self.tp > 1 and vocab % self.tp:
            raise Invalid("parallel.tp", f"expected a divisor of the vocabulary ({vocab}; the embedding is "
                                         f"split on it; pad model.vocab to a multiple), got {self.tp}")
        if self.sequence_parallel and self.tp == 1:
            raise Invalid("parallel.sequence_parallel", "expected tp > 1 (sequence parallelism shards over tp)")
        if self.sequence_parallel and seq_len is not None and seq_len % self.tp:
            raise Invalid("parallel.sequence_parallel",
                          f"expected model.seq_len ({seq_len}) to be a multiple "
                          f"of tp ({self.tp}): each tp rank holds a slice of the sequence")
        stages = self.num_stages
        if stages > layers:
            raise Invalid("parallel.pp", f"expected at most one pipeline stage per layer: {stages} stages "
                                         f"(pp {self.pp} x {self.stages_per_rank} per rank) for {layers} layers")
        if self.pp_split is not None and self.pp > 1:
            if len(self.pp_split) != stages - 1:
                raise Invalid("parallel.pp_split",
                              f"expected {stages - 1} layer indices (the first layer of "
                              f"every stage after the first of {stages}), got {len(self.pp_split)}")
            if self.pp_split and self.pp_split[-1] >= layers:
                raise Invalid("parallel.pp_split", f"expected layer indices below {layers} (the model's "
                                                   f"layers), got {self.pp_split}")

    def stage_layers(self, layers: int) -> list[range]:
        """The layers of every stage, in stage order: the explicit split, or an even one (the
        first stages take one more when the layers do not divide)."""
        stages = self.num_stages
        if self.pp_split is not None and stages > 1:
            bounds = [0, *self.pp_split, layers]
        else:
            base, extra = divmod(layers, stages)
            bounds = [0]
            for s in range(stages):
                bounds.append(bounds[-1] + base + (1 if s < extra else 0))
        return [range(a, b) for a, b in pairwise(bounds)]


@dataclass(frozen=True)
class Layout:
    """A :class:`ParallelSpec` resolved against a world size and a batch."""

    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int
    accumulation: int        # micro-batches per step on each data-parallel rank
    micro_batch: int         # sequences per micro-batch
    spec: ParallelSpec = field(compare=False)

    @property
    def world_size(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel ranks: each reads its own share of the global batch."""
        return self.dp_replicate * self.dp_shard

    @property
    def sizes(self) -> dict[str, int]:
        """Mesh dimension sizes, outermost first (:data:`MESH_DIMS`)."""
        return {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard, "tp": self.tp}

    @property
    def kind(self) -> str:
        """``ddp`` and ``fsdp`` are the plain data-parallel layouts; anything else is ``nd``."""
        if self.tp == 1 and self.pp == 1:
            if self.dp_shard == 1:
                return "ddp"
            if self.dp_replicate == 1:
                return "fsdp"
        return "nd"

    def coords(self, rank: int) -> dict[str, int]:
        """The mesh coordinates of ``rank`` (row-major over :data:`MESH_DIMS`)."""
        out: dict[str, int] = {}
        for name in reversed(MESH_DIMS):
            rank, out[name] = divmod(rank, self.sizes[name])
        return {name: out[name] for name in MESH_DIMS}

    def dp_rank(self, rank: int) -> int:
        """Which share of the global batch ``rank`` reads (tp and pp peers read the same)."""
        c = self.coords(rank)
        return c["dp_replicate"] * self.dp_shard + c["dp_shard"]

    def stage_ids(self, pp_rank: int) -> list[int]:
        """The pipeline stages held by the rank at ``pp_rank`` (loop order, as torch's
        interleaved schedules expect: stage ``pp_rank + k * pp``)."""
        return [pp_rank + k * self.pp for k in range(self.spec.stages_per_rank if self.pp > 1 else 1)]

    def describe(self) -> str:
        """One line such as ``pp 2 x dp_shard 2 x tp 2 (8 ranks)``; sizes of 1 left out."""
        parts = [f"{n} {s}" for n, s in self.sizes.items() if s > 1] or ["1 rank"]
        return " x ".join(parts) + (f" ({self.world_size} ranks)" if len(parts) > 1 else "")


def resolve_layout(parallel: ParallelSpec, sharding: str, world_size: int, global_batch: int,
                   micro_batch: int) -> Layout:
    """Fill the data-parallel dimension from the world size and split the global batch.
    Raises :class:`Invalid` with a key under ``trainer`` that names the key to change."""
    p = parallel
    world = f"the world size {world_size} (nodes x tasks per node)"
    if world_size % (p.tp * p.pp):
        key = "tp" if world_size % p.tp else "pp"
        raise Invalid(f"parallel.{key}", f"expected tp x pp to divide {world}, got tp {p.tp} x pp {p.pp} "
                                         f"= {p.tp * p.pp}")
    dp = world_size // (p.tp * p.pp)  # the data-parallel ranks, whatever their split
    fill = "dp_shard" if sharding == "fsdp" else "dp_replicate"
    sizes = {"dp_replicate": p.dp_replicate, "dp_shard": p.dp_shard}
    if sizes["dp_replicate"] is None and sizes["dp_shard"] is None:
        sizes = {"dp_replicate": 1, "dp_shard": 1}
        sizes[fill] = dp
    given = [n for n, v in sizes.items() if v is not None and getattr(p, n) is not None]
    for name, other in (("dp_replicate", "dp_shard"), ("dp_shard", "dp_replicate")):
        if sizes[other] is None:  # one given, the other fills the data-parallel ranks
            if dp % sizes[name]:
                raise Invalid(f"parallel.{name}", f"expected a divisor of the data-parallel ranks = world size "
                                                  f"{world_size} / (tp {p.tp} x pp {p.pp}) = {dp}, got {sizes[name]}")
            sizes[other] = dp // sizes[name]
    if sizes["dp_replicate"] * sizes["dp_shard"] != dp:  # both given
        raise Invalid(f"parallel.{given[-1]}", f"expected pp x dp_replicate x dp_shard x tp = {world}, got "
                                               f"{p.pp} x {sizes['dp_replicate']} x {sizes['dp_shard']} x {p.tp} "
                                               f"= {p.pp * p.tp * sizes['dp_replicate'] * sizes['dp_shard']}")
    if p.pp > 1 and p.pp_microbatches is not None:
        if global_batch % (dp * p.pp_microbatches):
            raise Invalid("parallel.pp_microbatches", f"expected a divisor of global_batch / data-parallel ranks "
                                                      f"= {global_batch} / {dp}, got {p.pp_microbatches}")
        accumulation, micro = p.pp_microbatches, global_batch // (dp * p.pp_microbatches)
        source = ""
    else:
        if global_batch % (micro_batch * dp):
            raise Invalid("global_batch", f"expected a multiple of micro_batch x data-parallel ranks = "
                                          f"{micro_batch} x {dp}, got {global_batch}")
        accumulation, micro = global_batch // (micro_batch * dp), micro_batch
        source = f" (global_batch / (micro_batch x data-parallel ranks) = {global_batch} / ({micro_batch} x {dp}))"
    if p.pp > 1:
        _check_microbatches(p, accumulation, source)
    return Layout(p.pp, sizes["dp_replicate"], sizes["dp_shard"], p.tp, accumulation, micro, p)


def _check_microbatches(p: ParallelSpec, count: int, source: str) -> None:
    """What torch's schedules need of the microbatch count (they refuse it at the first step
    otherwise): 1F1B at least one per stage, interleaved 1F1B whole rounds of ``pp``."""
    if p.pp_schedule == "interleaved_1f1b" and count % p.pp:
        raise Invalid("parallel.pp_microbatches", f"expected a multiple of pp ({p.pp}) micro-batches for "
                                                  f"interleaved_1f1b, got {count}{source}")
    if p.pp_schedule == "1f1b" and count < p.pp:
        raise Invalid("parallel.pp_microbatches", f"expected at least pp ({p.pp}) micro-batches for 1f1b "
                                                  f"(one per stage in flight), got {count}{source}")
