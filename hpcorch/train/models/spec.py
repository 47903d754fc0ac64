"""What a model family tells the rest of hpcorch (:class:`ModelSpec`), in torchtitan's manner
(``protocols/train_spec.py``: ``TrainSpec``), split in two halves:

- :class:`Shapes`, torch-free: parameter count, FLOPs per token, the tensors a block and the
  rest of a pipeline stage hold, and what a block keeps for backward. The planner
  (:mod:`hpcorch.plan.estimate`) reads these, so ``hpcorch plan`` never imports torch.
- :class:`ModelParts`, built on demand (:meth:`ModelSpec.parts`) because it imports torch: the
  module, its tensor-parallel plan, the loss, the tied weights and old checkpoints' upgrade.
- :class:`HFMapping`, loaded on demand too (:meth:`ModelSpec.hf`): the family as Hugging Face
  transformers names it (``model_type``, config keys, tensor names and layouts), for
  ``hpcorch export --format hf`` and ``trainer.init_from``. Its module imports no torch at import
  time, so that a family without one costs nothing.

The module a family builds keeps the contract the layouts rely on: ``blocks``, an
``nn.ModuleDict`` keyed by layer index (FSDP2 and ``torch.compile`` units, pipeline cuts),
``cfg`` (its config), ``keep_only(layers, first, last)`` to become one pipeline stage under the
whole model's parameter names, and ``forward(idx, targets) -> (logits, loss)`` (a stage returns
only its output; logits are None when the loss ran in chunks: ``build(cfg,
activation_checkpointing=, loss_chunk=)``, :func:`hpcorch.train.models.decoder.head_and_loss`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BlockActivations:
    """Bytes a block keeps for backward, per token of a micro-batch, in multiples of the width
    (Korthikanti et al.'s accounting): ``norm_out`` for what stays whole under tp (norm
    outputs), ``residual`` for what sequence parallelism shards, ``sharded`` for what tp splits
    (q, k, v, attention output, the MLP's hidden); ``heads`` for attention's log-sum-exp,
    ``norm_stats`` fp32 values per token (the norms' mean and rstd), ``widest`` the widest
    activation gradient of a backward in widths (the MLP's hidden)."""

    norm_out: int
    residual: int
    sharded: int
    heads: int
    norm_stats: int
    widest: int


class Shapes(Protocol):
    """A family's torch-free arithmetic over its config."""

    def num_params(self, cfg) -> int: ...

    def flops_per_token(self, cfg) -> int: ...

    def block_tensors(self, cfg, tp: int) -> list[Shape]:
        """One block's parameter shapes on a tp rank."""

    def root_tensors(self, cfg, tp: int, first: bool, last: bool) -> list[Shape]:
        """A stage's parameters outside its blocks (embeddings on the first, head on the last)."""

    def widest_block_grad(self, cfg, tp: int) -> Shape:
        """The block parameter whose gradient the backward makes at its widest moment."""

    def activations(self, cfg, bf16: bool) -> BlockActivations: ...


@dataclass(frozen=True)
class ModelParts:
    """A family's torch half.

    ``build(cfg, activation_checkpointing, loss_chunk)`` makes the whole module (seeded by the caller);
    ``apply_tp(module, mesh, parallel_spec)`` its tensor-parallel plan (the whole model or one
    stage); ``loss(logits, targets)`` the pipeline's loss; ``tied_weights(part)`` the part's
    ``(embedding copy, head copy)`` of a tied weight (None where it holds none; both None for an
    untied family); ``upgrade_state(state, cfg)`` views old checkpoints' tensors in today's shapes;
    ``export(name, tensor)`` a canonical tensor as files read outside hpcorch hold it
    (:mod:`hpcorch.train.checkpoint.export`).
    """

    build: Callable[..., Any]
    apply_tp: Callable[..., None]
    loss: Callable[..., Any]
    tied_weights: Callable[[Any], tuple[Any, Any]]
    upgrade_state: Callable[[dict, Any], dict]
    export: Callable[[str, Any], Any] = lambda name, tensor: tensor


@dataclass(frozen=True)
class HFMapping:
    """A family in Hugging Face transformers' terms.

    ``model_type`` and ``architecture`` are what ``config.json`` says (``gpt2``,
    ``GPT2LMHeadModel``). ``to_hf(state, cfg) -> (config_dict, tensors)`` turns the canonical
    full state (the tied weight once, under its canonical name) into transformers' config and
    tensors; ``from_hf(config_dict, tensors, like=None) -> (cfg, state)`` is its inverse: the
    config the checkpoint implies and the canonical state (every parameter of the module but a
    tied alias); ``like``, the config the weights are for, settles what a checkpoint leaves open
    (a GPT-2 file's all-zero biases fit a model with biases and one without).
    ``fixed(cfg) -> {field: value}`` is what of a config a checkpoint fixes (its shapes, not
    training choices such as dropout), in one form (a default spelled out), so that a job's
    ``trainer.model`` and a checkpoint's compare field by field.
    """

    model_type: str
    architecture: str
    to_hf: Callable[[dict, Any], tuple[dict, dict]]
    from_hf: Callable[..., tuple[Any, dict]]
    fixed: Callable[[Any], dict]


@dataclass(frozen=True)
class ModelSpec:
    """One family: its ``kind`` (``trainer.model.kind``), config class, torch-free
    :class:`Shapes`, the loader of its :class:`ModelParts`, and ``tied``: the canonical and the
    alias name of a weight shared by two modules (checkpoints store it once, under the first),
    or None; ``ties(cfg)``: whether a config ties them (the Llama's ``tied`` key; the GPT always).
    Code that holds a config asks :meth:`tied_names`.
    Its :class:`HFMapping`, if it has one, is ``MAPPING`` in its folder's ``hf.py``
    (found by :meth:`hf`, so a family gains one by adding that file alone)."""

    kind: str
    config_cls: type
    shapes: Shapes
    load_parts: Callable[[], ModelParts]
    tied: tuple[str, str] | None = None
    ties: Callable[[Any], bool] = lambda cfg: True

    def parts(self) -> ModelParts:
        """The torch half (imports torch)."""
        return self.load_parts()

    def tied_names(self, cfg) -> tuple[str, str] | None:
        """The (canonical, alias) names of the weight ``cfg``'s model ties, or None: an untied
        model's two weights are both its own (none is dropped from checkpoints or digests)."""
        return self.tied if self.tied is not None and self.ties(cfg) else None

    def hf(self) -> HFMapping:
        """The family's Hugging Face mapping (``hpcorch.train.models.<kind>.hf.MAPPING``); a
        ValueError where it has none."""
        import importlib

        name = f"{__package__}.{self.kind}.hf"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name not in (name, f"{__package__}.{self.kind}"):
                raise
            raise ValueError(f"model kind {self.kind!r} has no Hugging Face form") from None
        return module.MAPPING
