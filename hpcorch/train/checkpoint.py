"""What a checkpoint holds and how a run continues from one.

A checkpoint of step N holds the full (unsharded) model and optimizer state, written once by
rank 0, so that a run can resume on another number of ranks or another layout; every rank's
RNG state (determinism rule 3); and, in the commit record, the :class:`TrainState` and the
job's training config (:func:`hpcorch.spec.compat.training_config`), checked on load so that
another config fails loudly (or, accepted with ``--allow-config-change``, is recorded) instead
of silently continuing or starting afresh. The files themselves are the business of
:mod:`hpcorch.train.store`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable

import torch

from ..spec.compat import check_config_change, training_config
from ..spec.job import JobSpec
from .determinism import fresh_rank_seed, rng_state, seed_everything, set_rng_state
from .state import TrainState
from .store import CheckpointError, CheckpointStore, PeerSaveFailed

__all__ = ["Checkpointer", "CheckpointError", "fingerprint", "weights_digest"]


def fingerprint(job: JobSpec) -> dict:
    """What must not change between a checkpoint and the run that resumes it: checked only
    against checkpoints written before the full training config was recorded (still written,
    for older readers)."""
    tr = job.trainer
    return {"model": vars(tr.model), "global_batch": tr.global_batch,
            "seed": tr.seed, "data": {"source": tr.data.source, "path": tr.data.path,
                                      "val_fraction": tr.data.val_fraction, "max_bytes": tr.data.max_bytes},
            "optimizer": tr.optimizer.name, "sharding": tr.sharding}


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """One line per top-level key in which two fingerprints differ."""
    return [f"{k}: checkpoint has {saved.get(k)!r}, job has {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def weights_digest(state: dict) -> str:
    """SHA-256 over the model parameters in sorted-name order (as float32 bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class Checkpointer:
    """Saves and restores one rank's part of a run: model, optimizer, RNG and train state."""

    def __init__(self, store: CheckpointStore, job: JobSpec, rank: int, module: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, log: Callable[[str], None],
                 accepted_config: dict | None = None):
        self.store, self.job, self.rank = store, job, rank
        self.module, self.optimizer, self.log = module, optimizer, log
        self.accepted_config = accepted_config  # what the user accepted over a checkpoint's config
        self.saved_step = -1  # the step of the newest checkpoint this process knows of
        self.config_changes: list[str] = []  # the accepted differences the last restore went on under

    def full_state(self) -> tuple[dict, dict]:
        """Full model and optimizer state dicts on the CPU. A collective under FSDP: every
        rank calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.module, self.optimizer, options=opts)

    def save(self, state: TrainState) -> float:
        """Checkpoint ``state.step``; returns the seconds training was blocked."""
        self.wait()  # the previous save (async) is committed on every rank, or all stop here
        model_sd, optim_sd = self.full_state()
        shared = {"model": model_sd, "optimizer": optim_sd} if self.rank == 0 else None
        local = {"rng": rng_state()}
        meta = {**state.state_dict(), "fingerprint": fingerprint(self.job), "config": training_config(self.job)}
        blocked = self.store.save(state.step, shared, local, meta)
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
        if self.store.async_save and self.store.agree is not None:
            if not self.store.agree(error is None) and error is None:
                raise PeerSaveFailed(self.saved_step)
        if error is not None:
            raise error

    def restore(self, state: TrainState, resume_step: int | None = None) -> bool:
        """Load ``resume_step``, or the latest committed checkpoint that verifies, into the
        model, optimizer, RNG and ``state``. False if there is none (a fresh start)."""
        found = self._find(resume_step)
        if found is None:
            return False
        step, shared, local, record = found
        self._check_config(step, record)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        from .model import legacy_state  # q/k/v saved as (3 * width, width) before it was (3, width, width)

        width = self.job.trainer.model.width
        set_state_dict(self.module, self.optimizer, model_state_dict=legacy_state(shared["model"], width),
                       optim_state_dict=legacy_state(shared["optimizer"], width),
                       options=StateDictOptions(full_state_dict=True))
        if local is not None:
            set_rng_state(local["rng"])
        else:  # a rank that did not exist in the saved run
            seed_everything(fresh_rank_seed(self.job.trainer.seed, self.rank, step))
        state.load_state_dict(record)
        self.saved_step = step
        return True

    def _find(self, resume_step: int | None) -> tuple[int, dict, dict | None, dict] | None:
        """An explicit step must exist (never a silent fresh start); else the latest."""
        if resume_step is None:
            return self.store.load_latest(log=self.log)
        committed = self.store.committed_steps()
        if resume_step not in committed:
            raise CheckpointError(f"no committed checkpoint at step {resume_step} in "
                                  f"{self.store.root} (committed: {committed or 'none'})")
        return (resume_step, *self.store.load(resume_step))

    def _check_config(self, step: int, record: dict) -> None:
        """Before any state is loaded: refuse another config unless the user accepted it."""
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
