"""Per-GPU memory of one training step, from the job spec alone (torch-free).

The trainer's own tensors, by what :mod:`hpcorch.train` keeps in which dtype:

- parameters are fp32 (the master copy) in every layout; autocast (``precision: bf16``) casts
  them per op, FSDP2's mixed precision all-gathers bf16 copies. Gradients are fp32 (FSDP2
  reduces in fp32). AdamW keeps two fp32 states per parameter, Adafactor a row and a column
  factor per matrix. Plain DDP keeps its fp32 gradient buckets beside the gradients.
- the model's tensors and what a block saves for backward are its family's
  (:class:`hpcorch.train.models.spec.Shapes`, torch-free, found by ``trainer.model.kind``): the
  shapes on a tp rank of a block and of the rest of a stage (for the GPT: q/k/v, the MLP and the
  embedding's vocabulary rows split over ``tp``, norms and the position embedding whole).
  FSDP2 shards every tensor of the (tp-local) model on dimension 0, padded to equal rows.
- activations: per block and micro-batch, Korthikanti et al.'s accounting with the family's
  coefficients (:class:`hpcorch.train.models.spec.BlockActivations`), then the final norm, the
  logits and the fp32 log-softmax of the loss. Activation checkpointing keeps each block's input
  and recomputes the block in backward. A loss in chunks (``trainer.loss_chunk``) keeps only
  the final norm's output, and its backward holds one chunk's
  logits and their gradients (with the output layer's gradient, made by the first chunk).
- pipeline stages hold their micro-batches in flight as the schedule runs them (GPipe all of
  them, 1F1B at most one per later stage) and the receive buffers torch's stages preallocate.

The step's peak is the largest of three moments, for the most loaded rank: the loss's backward
(every activation alive, the cross-entropy's gradients being made), each block's backward (the
recomputed block under checkpointing), and the optimizer step (every gradient alive).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hpcorch.spec.model import ModelConfig
from hpcorch.spec.parallel import Layout
from hpcorch.train.models import Shapes, spec_of

GIB = 2 ** 30
FP32, BF16 = 4, 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU at the step's peak, by what holds them; ``overhead`` is the CUDA context and
    allocator's share (0 on CPU). ``phase`` says where the step peaks, ``rank`` on which rank."""

    params: int
    grads: int
    optimizer: int
    activations: int
    temporary: int
    overhead: int
    phase: str
    rank: str

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.temporary + self.overhead

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class Setup:
    """What decides a step's memory: the model, the layout, the precision, the optimizer."""

    cfg: ModelConfig
    layout: Layout
    bf16: bool = False
    cuda: bool = True
    checkpointing: bool = False
    optimizer: str = "adamw"
    sharding: str = "ddp"          # trainer.sharding: the kind of a one-rank job
    compression: bool = False      # DDP with a gradient compression hook (a DDP even on one rank)
    loss_chunk: int = 0            # trainer.loss_chunk: tokens per chunk of the loss (0: whole)

    @property
    def shapes(self) -> Shapes:
        """The model family's torch-free arithmetic."""
        return spec_of(self.cfg).shapes

    @property
    def fsdp(self) -> bool:
        """FSDP2 holds the parameters (plain fsdp, or an nd layout with data parallelism)."""
        kind = self.layout.kind
        if kind == "nd":
            return self.layout.dp > 1
        return (kind if self.layout.dp > 1 else self.sharding) == "fsdp"

    @property
    def ddp(self) -> bool:
        """DDP wraps the model (and keeps its gradient buckets)."""
        return self.layout.kind == "ddp" and not self.fsdp and (self.layout.world_size > 1 or self.compression)


def setup_of(job, device: str = "cuda") -> Setup:
    """The :class:`Setup` of ``job`` on ``device`` ("cuda" or "cpu"), as the trainer resolves it
    (``precision: auto`` is bf16 on CUDA, fp32 on CPU)."""
    tr = job.trainer
    bf16 = tr.precision == "bf16" or (tr.precision == "auto" and device == "cuda")
    return Setup(tr.model, job.layout, bf16=bf16, cuda=device == "cuda",
                 checkpointing=tr.activation_checkpointing, optimizer=tr.optimizer.name,
                 sharding=tr.sharding, compression=tr.grad_compression != "none", loss_chunk=tr.loss_chunk)


# ----- parameters -------------------------------------------------------------------------------
def _numel(shape: tuple[int, ...], shards: int = 1) -> int:
    """Elements of rank 0's FSDP2 shard of ``shape`` (dimension 0 split in padded equal rows;
    rank 0 holds the most)."""
    return math.ceil(shape[0] / shards) * math.prod(shape[1:])


def _optimizer_numel(shape: tuple[int, ...], name: str) -> int:
    """AdamW: two states per element. Adafactor: row and column factors of a matrix (a tensor
    of more dimensions is factored on its last two), the whole second moment of a vector."""
    if name != "adafactor":
        return 2 * math.prod(shape)
    if len(shape) < 2:
        return math.prod(shape)
    lead = math.prod(shape[:-2])
    return lead * (shape[-2] + shape[-1])


@dataclass(frozen=True)
class Stage:
    """What one rank holds: its blocks and whether it has the embeddings / the head."""

    blocks: int
    first: bool
    last: bool
    name: str


def stages_of(setup: Setup) -> list[list[Stage]]:
    """For each pipeline rank, the stages it holds (one, or several under interleaving)."""
    layout, cfg = setup.layout, setup.cfg
    if layout.pp == 1:
        return [[Stage(cfg.layers, True, True, "every rank")]]
    layers = layout.spec.stage_layers(cfg.layers)
    last = len(layers) - 1
    return [[Stage(len(layers[s]), s == 0, s == last, f"pp rank {r}") for s in layout.stage_ids(r)]
            for r in range(layout.pp)]


# ----- the estimate -----------------------------------------------------------------------------
def estimate_memory(job, device: str = "cuda", cuda_overhead_bytes: int = 0) -> MemoryEstimate:
    """Per-GPU bytes at the peak of a training step of ``job``'s layout on ``device``; the
    CUDA overhead is added on CUDA only."""
    return estimate_setup(setup_of(job, device), cuda_overhead_bytes if device == "cuda" else 0)


def estimate_setup(setup: Setup, overhead: int = 0) -> MemoryEstimate:
    """The most loaded rank's peak (see :func:`estimate_memory`)."""
    best = None
    for pp_rank, stages in enumerate(stages_of(setup)):
        est = _RankModel(setup, stages, pp_rank).peak(overhead)
        if best is None or est.total > best.total:
            best = est
    return best


class _RankModel:
    """The bytes of one pipeline rank (every rank when there is no pipeline) through a step."""

    def __init__(self, setup: Setup, stages: list[Stage], pp_rank: int):
        self.setup, self.stages, self.pp_rank = setup, stages, pp_rank
        cfg, layout = setup.cfg, setup.layout
        self.cfg, self.layout, self.t = cfg, layout, layout.tp
        self.shapes, self.act = setup.shapes, setup.shapes.activations(cfg, setup.bf16)
        spec = layout.spec
        self.rep = 1 / self.t if spec.sequence_parallel and self.t > 1 else 1.0  # residual stream share
        self.vocab = cfg.vocab // self.t if self.t > 1 and spec.loss_parallel else cfg.vocab
        self.rows = layout.micro_batch * cfg.seq_len  # tokens of a micro-batch
        # The loss's rows at once: a chunk of whole positions (decoder.head_and_loss), or all.
        chunk = setup.loss_chunk
        self.chunked = 0 < chunk < self.rows
        self.loss_rows = layout.micro_batch * max(1, chunk // layout.micro_batch) if self.chunked else self.rows
        self.S = self.rows * cfg.width
        self.shards = layout.dp_shard if setup.fsdp else 1
        self.n = layout.accumulation
        # FSDP2 all-gathers bf16 copies under bf16: its residual stream is bf16 then.
        self.res = BF16 if setup.fsdp and setup.bf16 else FP32
        self.gd = BF16 if setup.bf16 else FP32  # dtype of activation gradients in matmuls
        self.pdt = BF16 if setup.bf16 else FP32  # FSDP2's unsharded parameter dtype
        self.reshard = setup.fsdp and layout.pp == 1

    # -- parameters, gradients, optimizer ----------------------------------------------------
    def tensors(self, stage: Stage, root: bool = True, blocks: bool = True) -> list[tuple[int, ...]]:
        out = self.shapes.root_tensors(self.cfg, self.t, stage.first, stage.last) if root else []
        return out + (self.shapes.block_tensors(self.cfg, self.t) * stage.blocks if blocks else [])

    def all_tensors(self) -> list[tuple[int, ...]]:
        return [s for st in self.stages for s in self.tensors(st)]

    def full_bytes(self, shapes, dtype: int = FP32) -> int:
        return sum(math.prod(s) for s in shapes) * dtype

    def local_bytes(self, shapes, dtype: int = FP32) -> int:
        return sum(_numel(s, self.shards) for s in shapes) * dtype

    def optimizer_bytes(self) -> int:
        shapes = [(math.ceil(s[0] / self.shards), *s[1:]) for s in self.all_tensors()]
        states = sum(_optimizer_numel(s, self.setup.optimizer) for s in shapes)
        return states * FP32 + len(shapes) * FP32  # + one fp32 step count per tensor

    def optimizer_temp(self) -> int:
        """The step's scratch: foreach kernels (CUDA, every layout but plain DDP's fused AdamW)
        take one copy of the states' size; the single-tensor path (CPU) one of the largest."""
        shapes = self.all_tensors()
        if self.setup.cuda:
            fused = self.setup.optimizer == "adamw" and self.layout.kind == "ddp" and not self.setup.fsdp
            return 0 if fused else self.local_bytes(shapes)
        return max(_numel(s, self.shards) for s in shapes) * FP32

    # -- activations -------------------------------------------------------------------------
    def block_saved(self) -> float:
        """Bytes one block keeps for backward per micro-batch (its output included)."""
        act = self.act
        small = self.layout.micro_batch * (act.heads // self.t) * self.cfg.seq_len * FP32 \
            + act.norm_stats * self.rows * self.rep * FP32  # attention's log-sum-exp; the norms' mean and rstd
        return self.S * (act.norm_out + act.residual * self.rep + act.sharded / self.t) + small

    def head_saved(self) -> float:
        """The last stage's: final norm output, logits, the loss's fp32 log-softmax (in chunks:
        the norm's output alone, the logits are recomputed chunk by chunk in backward). Under
        pp the schedule's loss makes the logits from the stage's output and keeps only the
        log-softmax; the whole model returns its logits, which the step holds."""
        act = BF16 if self.setup.bf16 else FP32
        if self.chunked:
            return self.S * act
        return self.S * act + self.rows * self.vocab * ((act if self.layout.pp == 1 else 0) + FP32)

    def ce_temp(self) -> float:
        """The cross-entropy's backward: gradients of the log-softmax and of the logits (one more
        under loss parallelism), cast back to bf16 under autocast. In chunks (measured under
        MemTracker): a chunk's recomputed log-softmax and those gradients in fp32, one output
        layer's gradient (the first chunk makes it; later chunks, and micro-batches after the
        first, add theirs to it) and the norm output's gradient the chunks fill."""
        count = 3 if self.t > 1 and self.layout.spec.loss_parallel else 2
        if not self.chunked:
            return self.rows * self.vocab * (count * FP32 + (BF16 if self.setup.bf16 else 0))
        head = self.full_bytes(self.shapes.root_tensors(self.cfg, self.t, False, True))
        return self.loss_rows * self.vocab * (count + 1) * FP32 + head + self.S * self.gd

    def block_temp(self) -> float:
        """A block's backward: the widest activation gradients (the MLP's) and the residual stream's."""
        return self.S * (self.gd * self.act.widest / self.t + 2 * self.res * self.rep)

    def micro(self, stage: Stage) -> float:
        """One micro-batch's saved activations on ``stage``."""
        x0 = self.S * FP32 * self.rep if stage.first else 0
        per_block = self.S * self.res * self.rep if self.setup.checkpointing else self.block_saved()
        return x0 + stage.blocks * per_block + (self.head_saved() if stage.last else 0)

    def inflight(self) -> int:
        """Micro-batches whose activations a rank holds at once (stage chunks when interleaved)."""
        spec, pp, n = self.layout.spec, self.layout.pp, self.n
        if pp == 1:
            return 1
        if spec.pp_schedule == "gpipe":
            return n
        if spec.pp_schedule == "1f1b":
            return min(n, pp - self.pp_rank)
        v = len(self.stages)
        return min(n * v, (v - 1) * pp + 2 * (pp - 1 - self.pp_rank) + 1)

    def buffers(self) -> float:
        """torch's pipeline stages preallocate a receive buffer per micro-batch: inputs on every
        stage but the first, output gradients on every stage but the last."""
        if self.layout.pp == 1:
            return 0
        one = self.S * self.res * self.rep
        return sum(self.n * one * ((not st.first) + (not st.last)) for st in self.stages)

    # -- the moments of a step -----------------------------------------------------------------
    def peak(self, overhead: int) -> MemoryEstimate:
        shapes = self.all_tensors()
        params, optimizer = self.local_bytes(shapes), self.optimizer_bytes()
        full_grads = self.full_bytes(shapes)
        buckets = full_grads if self.setup.ddp else 0
        stage = max(self.stages, key=self.micro)
        chunks = self.inflight()
        v = len(self.stages)
        micro = sum(self.micro(st) for st in self.stages) / v  # a chunk's, averaged over the stages held
        unsharded_root = unsharded_blocks = gather = block_full = 0
        if self.setup.fsdp:
            roots = [s for st in self.stages for s in self.tensors(st, blocks=False)]
            one_block = self.shapes.block_tensors(self.cfg, self.t)
            unsharded_root = self.full_bytes(roots, self.pdt)
            block_full = self.full_bytes(one_block, self.pdt)
            gather = self.shards * self.local_bytes(one_block, self.pdt)
            blocks_held = sum(st.blocks for st in self.stages)
            unsharded_blocks = 2 * block_full if self.reshard else blocks_held * block_full
        # Gradients kept from earlier micro-batches (FSDP2 accumulates them unsharded in fp32).
        earlier = self.n > chunks if self.layout.pp > 1 else self.n > 1
        acc = full_grads if earlier else 0
        moments = []
        # 1. the first backward of the most loaded moment: every micro-batch in flight alive.
        first_temp = self.ce_temp() if stage.last else self.block_temp()
        moments.append(("loss backward" if stage.last else "first backward",
                        params + unsharded_root + (0 if self.reshard else unsharded_blocks), acc + buckets,
                        chunks * micro + self.buffers(), first_temp + (gather if self.reshard else 0)))
        if stage.last and chunks > 1 and not acc:
            # 1b. the second micro-batch's loss backward (GPipe): one micro-batch fewer alive, but
            # the first one's gradients made; the larger where the output layer's gradient
            # outweighs a micro-batch's activations (a large vocabulary, the loss in chunks).
            moments.append(("loss backward", params + unsharded_root + (0 if self.reshard else unsharded_blocks),
                            full_grads + buckets, (chunks - 1) * micro + self.buffers(),
                            first_temp + (gather if self.reshard else 0)))
        # 2. each block's backward (the recomputed block under checkpointing). Its bytes are linear
        # in k (earlier blocks' activations grow as later blocks' gradients shrink): the first and
        # the last block bound them (every block would make a plan quadratic in the layers).
        older = (chunks - 1) * micro + self.buffers()
        for k in sorted({0, stage.blocks - 1}) if stage.blocks else ():
            moments.append(self._block_moment(stage, k, params + unsharded_root + unsharded_blocks,
                                              acc, buckets, older, block_full))
        # 3. the optimizer step: every gradient, no activation but the pipeline's buffers.
        final = self.local_bytes(shapes) if self.setup.fsdp else full_grads
        moments.append(("optimizer step", params, final + buckets, self.buffers(), self.optimizer_temp()))
        phase, p, g, a, tmp = max(moments, key=lambda m: sum(m[1:]))
        return MemoryEstimate(int(p), int(g), int(optimizer), int(a), int(tmp), int(overhead), phase,
                              self.stages[0].name)

    def _block_moment(self, stage: Stage, k: int, params: float, acc: float, buckets: float, older: float,
                      block_full: int) -> tuple:
        """Block ``k``'s backward (blocks run backward from the last one): earlier blocks'
        activations (or checkpoints) alive, later blocks' gradients made."""
        blk = self.block_saved()
        out = self.S * self.res * self.rep
        x0 = self.S * FP32 * self.rep if stage.first else 0
        if self.setup.checkpointing:
            # checkpoints up to this block and the block recomputed (up to its output)
            mine = x0 + k * out + (blk - out)
        else:
            mine = x0 + (k + 1) * blk
        if stage.last and self.layout.pp == 1 and not self.chunked:
            mine += self.rows * self.vocab * (BF16 if self.setup.bf16 else FP32)  # the step keeps the logits
        one_block = self.shapes.block_tensors(self.cfg, self.t)
        # Gradients made so far: later blocks', the head's and this block's widest (the GPT's MLP
        # output projection: its backward's widest moment). With gradients kept from earlier
        # micro-batches they accumulate in place: nothing new.
        made = [*one_block * (stage.blocks - 1 - k), self.shapes.widest_block_grad(self.cfg, self.t)]
        if stage.last:
            made += self.shapes.root_tensors(self.cfg, self.t, False, True)
        later = 0 if acc else self.local_bytes(made) if self.setup.fsdp else self.full_bytes(made)
        temp = self.block_temp() + (block_full if self.setup.fsdp else 0)  # FSDP2: the block's unsharded grads
        return ("block backward", params, acc + buckets + later, older + mine, temp)


def checkpoint_bytes(cfg: ModelConfig, optimizer: str) -> int:
    """What a checkpoint holds: the fp32 parameters and the optimizer's states."""
    family = spec_of(cfg).shapes
    shapes = family.root_tensors(cfg, 1, True, True) + family.block_tensors(cfg, 1) * cfg.layers
    params = sum(math.prod(s) for s in shapes)
    return (params + sum(_optimizer_numel(s, optimizer) for s in shapes)) * FP32
