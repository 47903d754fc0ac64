"""What a checkpoint holds and how a run continues from one.

A checkpoint of step N holds the model and optimizer state in CANONICAL form, sharded as the
saving layout held it (every rank writes its own shards through DCP, see
:mod:`hpcorch.train.checkpoint.store`), so that a run can resume on another number of ranks or another
layout (DCP reshards by name); every rank's RNG state (determinism rule 3); and, in the commit
record, the :class:`TrainState` and the job's training config
(:func:`hpcorch.spec.compat.training_config`), checked before any state is loaded so that
another config fails loudly (or, accepted with ``--allow-config-change``, is recorded).

Canonical state: ``{"model": {fqn: tensor}, "optim": {flattened optimizer key: value}}`` merged
over this rank's model parts (one per pipeline stage it holds), with the names of the whole model.
A tied weight (the family's :meth:`~hpcorch.train.models.spec.ModelSpec.tied_names`; the GPT's
embedding and head) appears only under its canonical name (``wte.weight``): a part holding both
drops the alias (``head.weight``); a part holding only the alias (the last pipeline stage)
names it canonically (model and optimizer keys).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from hpcorch.spec.compat import check_config_change, training_config
from hpcorch.spec.job import JobSpec
from hpcorch.spec.model import DEFAULT_KIND, recorded
from hpcorch.train.checkpoint.store import CheckpointError, CheckpointStore, PeerSaveFailed
from hpcorch.train.determinism import fresh_rank_seed, rng_state, seed_everything, set_rng_state
from hpcorch.train.models import get_model_spec, spec_of
from hpcorch.train.state import TrainState

__all__ = ["Checkpointer", "CheckpointError", "canonical_state", "checkpoint_group", "fingerprint",
           "model_digest", "weights_digest"]

# The tied weight's (canonical, alias) names of the default family, for callers that name no
# family (tests, tools reading today's checkpoints); the trainer passes its job's family's.
DEFAULT_TIED = get_model_spec(DEFAULT_KIND).tied
Tied = tuple[str, str] | None


def fingerprint(job: JobSpec) -> dict:
    """What must not change between a checkpoint and the run that resumes it: checked only
    against checkpoints written before the full training config was recorded (still written,
    for older readers)."""
    tr = job.trainer
    return {"model": recorded(tr.model), "global_batch": tr.global_batch,
            "seed": tr.seed, "data": {"source": tr.data.source, "path": tr.data.path,
                                      "val_fraction": tr.data.val_fraction, "max_bytes": tr.data.max_bytes},
            "optimizer": tr.optimizer.name, "sharding": tr.sharding}


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """One line per top-level key in which two fingerprints differ."""
    return [f"{k}: checkpoint has {saved.get(k)!r}, job has {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a full tensor's values as float32, row-major, native (little-endian) bytes."""
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def combine_digests(digests: dict[str, str]) -> str:
    """The weights digest: SHA-256 over ``name NUL digest-bytes`` of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(name.encode() + b"\0" + bytes.fromhex(digests[name]))
    return h.hexdigest()


def weights_digest(state: dict, tied: Tied = DEFAULT_TIED) -> str:
    """The weights digest of a full (unsharded, plain-tensor) model state dict."""
    return combine_digests({n: tensor_digest(t) for n, t in _canonical_model(state, tied).items()})


def model_digest(parts: Sequence[nn.Module] | nn.Module, tied: Tied = DEFAULT_TIED) -> str:
    """The weights digest of the model whose parts the ranks hold, the same for the same
    weights whatever the layout. Every rank calls it (a collective): tensor by tensor, a
    sharded tensor is gathered to its full value on the ranks that shard it (never the whole
    model on one rank), then the small {name: digest} dicts of all ranks (pipeline stages)
    are merged."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    digests: dict[str, str] = {}
    # Gathering a tp x FSDP tensor warns that it takes two all-gathers: true, and harmless here.
    quiet = logging.getLogger("torch.distributed.tensor._redistribute")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for part in _as_list(parts):
            for name, value in _canonical_model(get_model_state_dict(part), tied).items():
                full = value.full_tensor() if isinstance(value, DTensor) else value
                digests[name] = tensor_digest(full)
    finally:
        quiet.setLevel(level)
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, digests)
        for other in gathered:
            digests.update(other)
    return combine_digests(digests)


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _canonical_name(key: str, alias: bool, tied: Tied) -> str | None:
    """A model key's canonical name: None drops the tied duplicate (the GPT's ``head.weight``);
    ``alias``: the part holds only the duplicate, which stands for the canonical name."""
    if tied is not None and key == tied[1]:
        return tied[0] if alias else None
    return key


def _holds_alias_only(sd: dict, tied: Tied) -> bool:
    return tied is not None and tied[0] not in sd


def _canonical_model(sd: dict, tied: Tied = DEFAULT_TIED) -> dict:
    alias = _holds_alias_only(sd, tied)
    out = {}
    for key, value in sd.items():
        name = _canonical_name(key, alias, tied)
        if name is not None:
            out[name] = value
    return out


def _canonical_optim_key(key: str, tied: Tied) -> str:
    """``state.head.weight.exp_avg`` -> ``state.wte.weight.exp_avg`` (the same tied parameter)."""
    kind, _, rest = key.partition(".")
    if tied is not None and rest.startswith(tied[1] + "."):
        return f"{kind}.{tied[0]}{rest[len(tied[1]):]}"
    return key


def canonical_state(parts: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
                    tied: Tied = DEFAULT_TIED) -> tuple[dict, list[tuple[dict, dict]]]:
    """This rank's canonical state (live tensors, DTensors stay sharded; an optimizer without
    state yet is initialised by torch), and per part the {own key: canonical key} maps of its
    model and optimizer keys, to hand a loaded state back to each part."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(flatten_optimizer_state_dict=True)
    model, optim, maps = {}, {}, []
    for part, optimizer in zip(parts, optimizers, strict=True):
        msd = get_model_state_dict(part, options=opts)
        osd = get_optimizer_state_dict(part, optimizer, options=opts)
        alias = _holds_alias_only(msd, tied)
        mmap = {k: _canonical_name(k, alias, tied) or tied[0] for k in msd}
        omap = {k: _canonical_optim_key(k, tied) for k in osd}
        model.update({mmap[k]: v for k, v in msd.items() if _canonical_name(k, alias, tied) is not None})
        optim.update({omap[k]: v for k, v in osd.items()})
        maps.append((mmap, omap))
    return {"model": model, "optim": optim}, maps


def checkpoint_group(timeout_s: float):
    """DCP's own gloo process group: every rank creates it once, at the same point of its
    build (new_group is a collective in creation order); None outside a process group."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


class Checkpointer:
    """Saves and restores one rank's part of a run: its model parts (one per pipeline stage it
    holds; one module without pp), their optimizers, RNG and train state."""

    def __init__(self, store: CheckpointStore, job: JobSpec, rank: int,
                 parts: Sequence[nn.Module] | nn.Module,
                 optimizers: Sequence[torch.optim.Optimizer] | torch.optim.Optimizer,
                 log: Callable[[str], None], accepted_config: dict | None = None):
        self.store, self.job, self.rank = store, job, rank
        self.parts, self.optimizers, self.log = _as_list(parts), _as_list(optimizers), log
        if len(self.parts) != len(self.optimizers):
            raise ValueError(f"{len(self.parts)} model parts but {len(self.optimizers)} optimizers")
        self.accepted_config = accepted_config  # what the user accepted over a checkpoint's config
        self.family = spec_of(job.trainer.model)  # old checkpoints' upgrade
        self.tied = self.family.tied_names(job.trainer.model)  # the tied weight's names, if the model ties one
        self.saved_step = -1  # the step of the newest checkpoint this process knows of
        self.config_changes: list[str] = []  # the accepted differences the last restore went on under

    def save(self, state: TrainState) -> float:
        """Checkpoint ``state.step``; returns the seconds training was blocked."""
        self.wait()  # the previous save (async) is committed on every rank, or all stop here
        sharded, _ = canonical_state(self.parts, self.optimizers, self.tied)
        local = {"rng": rng_state()}
        meta = {**state.state_dict(), "fingerprint": fingerprint(self.job), "config": training_config(self.job)}
        blocked = self.store.save(state.step, sharded, local, meta)
        self.saved_step = state.step
        return blocked

    def wait(self) -> None:
        """Block until the save in flight (if any) is committed. Every rank calls it at the same
        points; after an asynchronous save the ranks agree on the outcome (the background
        thread cannot run a collective), so a rank whose save failed says why and the others
        stop with it. A synchronous save agreed inside the store already."""
        error = None
        try:
            self.store.wait()
        except CheckpointError as exc:
            error = exc
        # agree() is a collective: every rank must reach it, whether its own save failed or not
        first = (self.store.agree(error is None) if self.store.async_save and self.store.agree is not None
                 else None)
        if first is not None and first != self.store.rank:  # a peer failed: its error line says why, once
            raise PeerSaveFailed(self.saved_step) from error
        if error is not None:
            raise error

    def restore(self, state: TrainState, resume_step: int | None = None) -> bool:
        """Load ``resume_step``, or the latest committed checkpoint that verifies, into the
        model parts, optimizers, RNG and ``state``. False if there is none (a fresh start)."""
        if self.rank == 0:  # before the load's collective: no rank writes until the first save
            self.store.clean_leftovers()
        target, maps = canonical_state(self.parts, self.optimizers, self.tied)
        found = self._find(resume_step, target)
        if found is None:
            return False
        step, loaded, local, record = found
        if loaded is target:
            self._apply(loaded, maps)
        else:  # a checkpoint of the format before DCP: the full state
            self._apply_full(loaded)
        if local is not None:
            set_rng_state(local["rng"])
        else:  # a rank that did not exist in the saved run
            seed_everything(fresh_rank_seed(self.job.trainer.seed, self.rank, step))
        state.load_state_dict(record)
        self.saved_step = step
        return True

    def _apply(self, loaded: dict, maps: list[tuple[dict, dict]]) -> None:
        """Hand the loaded canonical state back to each part under its own key names (the
        tensors were filled in place; param groups and FSDP/TP bookkeeping need the set)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(flatten_optimizer_state_dict=True)
        for part, optimizer, (mmap, omap) in zip(self.parts, self.optimizers, maps, strict=True):
            set_model_state_dict(part, {k: loaded["model"][c] for k, c in mmap.items()}, options=opts)
            set_optimizer_state_dict(part, optimizer, {k: loaded["optim"][c] for k, c in omap.items()},
                                     options=opts)

    def _apply_full(self, shared: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        upgrade, cfg = self.family.parts().upgrade_state, self.job.trainer.model  # old checkpoints' shapes
        model, optim = upgrade(shared["model"], cfg), upgrade(shared["optimizer"], cfg)
        for part, optimizer in zip(self.parts, self.optimizers, strict=True):
            set_state_dict(part, optimizer, model_state_dict=model, optim_state_dict=optim,
                           options=StateDictOptions(full_state_dict=True, strict=len(self.parts) == 1))

    def _find(self, resume_step: int | None, target: dict) -> tuple[int, dict, dict | None, dict] | None:
        """An explicit step must exist (never a silent fresh start); else the latest that
        verifies. The config is checked against each commit record before its state loads."""
        committed = self.store.committed_steps()
        if resume_step is not None and resume_step not in committed:
            raise CheckpointError(f"no committed checkpoint at step {resume_step} in "
                                  f"{self.store.root} (committed: {committed or 'none'})")
        candidates = [resume_step] if resume_step is not None else list(reversed(committed))
        failed = []
        for step in candidates:
            self._check_config(step, self.store.layout.record(step))
            try:
                return (step, *self.store.load(step, target))
            except CheckpointError as exc:
                if resume_step is not None:
                    raise
                self.log(f"hpcorch: skipping corrupted checkpoint: {exc}")
                failed.append(step)
        if failed:  # the model may hold part of a corrupted load: never train on from it
            raise CheckpointError(f"no committed checkpoint in {self.store.root} verifies "
                                  f"(steps {failed}); move them away to start afresh")
        return None

    def _check_config(self, step: int, record: dict) -> None:
        """Before any state is loaded: refuse another config unless the user accepted it."""
        if not record:
            return  # unreadable marker: the load says so (and a latest-search skips it)
        if "config" not in record:  # written before configs were recorded
            self._check_fingerprint(record["fingerprint"])
            return
        where = f"the checkpoint at step {step} in {self.store.root}"
        self.config_changes = check_config_change(record["config"], training_config(self.job), where,
                                                  accepted=self.accepted_config)

    def _check_fingerprint(self, saved: dict) -> None:
        current = json.loads(json.dumps(fingerprint(self.job)))  # as it reads back from JSON
        if saved != current:
            raise CheckpointError("the checkpoint does not match this job's config ("
                                  + "; ".join(fingerprint_differences(saved, current))
                                  + "). Use another --run-dir or checkpoint.dir to start afresh.")
