"""The determinism rules, in one place: what makes a run, a resumed run and a run on another
launcher compute the same numbers bit for bit (on CPU with gloo; on GPUs up to the kernels).

1. **Threads.** The number of intra-op threads changes the order of CPU reductions, so it is
   pinned to the job's ``resources.cpus_per_task`` unless ``OMP_NUM_THREADS`` says otherwise
   (:func:`pin_threads`). Every launcher of the same job then computes the same numbers.
2. **One seed for the weights.** Every rank seeds Python, numpy and torch with the job's seed
   just before it builds the model (:func:`seed_everything`), so all ranks start from the same
   weights without a broadcast.
3. **Per-rank RNG state in the checkpoint.** Dropout and any other random op draw from each
   rank's own generators; their state is saved per rank (:func:`rng_state`) and restored on
   resume (:func:`set_rng_state`). A rank that did not exist in the saved run gets a fresh
   seed specific to its rank and the step (:func:`fresh_rank_seed`), never a copy of rank 0's.
4. **DDP bucket settling.** DDP all-reduces its first iteration with gradient buckets in reverse
   parameter order and then rebuilds them in gradient-ready order. With more than two ranks,
   another bucket layout means another summation order, so a resumed process (whose first step
   is not the run's first) would drift from an uninterrupted one by rounding. Every process
   therefore runs one zero-gradient backward before its first real step
   (:meth:`hpcorch.train.parallelize.base.ParallelModel.settle`), with the RNG state saved around it;
   weights, optimizer and RNG are untouched, and every real step uses the rebuilt layout.
5. **Data position is a global cursor.** Samples come from one seeded global order and the
   checkpoint stores the number consumed (``hpcorch.train.data``), so a resume on any world
   size continues the same sequence.
6. **The learning rate is a pure function of the step** (:func:`hpcorch.train.optim.lr_at`):
   there is no scheduler state to save.
7. **A fixed collective sequence.** Every rank issues the same collectives in the same order:
   the settling backward (DDP), per step one all-reduce of [loss, stop flag] and, only when a
   stop is agreed, a MAX all-reduce of the signal (:mod:`hpcorch.train.stop`), the evaluation's
   all-reduce, and the barrier at shutdown.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

# Spreads the fresh seeds of new ranks far apart from the job's seed and from each other.
_RANK_SEED_STRIDE = 1000003


def pin_threads(cpus_per_task: int) -> None:
    """Rule 1: use the job's CPU count for torch's threads unless OMP_NUM_THREADS is set."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpus_per_task)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (rule 2)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fresh_rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank that the checkpoint has no RNG state for (rule 3)."""
    return (seed + _RANK_SEED_STRIDE * (rank + 1) + step) % 2**64  # torch takes < 2**64


def rng_state() -> dict:
    """This rank's generator states (Python, numpy, torch CPU and, if present, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generator states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
