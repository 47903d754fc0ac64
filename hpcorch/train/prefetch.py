"""The next step's micro-batches, prepared in a background thread while this step trains.

A step starting at global cursor ``c`` reads, on data-parallel rank ``r`` of ``R``, the positions
``c + r*share ... c + (r+1)*share`` of the seeded global order (``share = global_batch / R``),
split into micro-batches of ``micro_batch`` sequences (:func:`step_positions`, the one rule,
and :meth:`SampleOrder.batch`). The prefetcher only moves
*when* that work happens, never *what* it reads: after handing out the step at ``c`` it starts
building the step at ``c + global_batch`` (the cursor the trainer asks for next unless it
stops). A request for any other cursor (the first step, a resume) is built synchronously and
the stale prefetch is dropped.

The worker thread owns its own view of the order (``order.view()``: caches are per object),
so it never races with the trainer's evaluation reading the validation split. On CUDA the rows
are copied to pinned host memory in the thread and moved with ``non_blocking=True`` in
:meth:`StepBatches.get`, on the caller's stream, so the copy overlaps the step's kernels.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from hpcorch.train.data import SampleOrder
from hpcorch.train.prepared import PreparedOrder

Batch = tuple[list[int], torch.Tensor, torch.Tensor]


def step_positions(cursor: int, global_batch: int, dp_rank: int, dp_size: int) -> range:
    """This data-parallel rank's contiguous share of the global batch starting at ``cursor``:
    the samples of a step depend on the seed and the cursor only, never on the layout."""
    share = global_batch // dp_size
    start = cursor + dp_rank * share
    return range(start, start + share)


class StepBatches:
    """The micro-batches of one data-parallel rank, one step ahead.

    ``get(cursor)`` returns ``global_batch / (dp_size * micro_batch)`` tuples ``(ids, x, y)``
    on ``device``; ``depth`` is how many steps ahead the worker may run (1 is enough: building
    a step's batches takes far less than training on them).
    """

    def __init__(self, order: SampleOrder | PreparedOrder, dp_rank: int, dp_size: int, global_batch: int,
                 micro_batch: int, device: torch.device, depth: int = 1):
        if global_batch % (dp_size * micro_batch):
            raise ValueError(f"global batch {global_batch} is not a multiple of dp size x micro batch "
                             f"= {dp_size} x {micro_batch}")
        # A private view of the order: same tokens, seed and permutation, its own cache.
        self.order = order.view()
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.device = torch.device(device)
        self.depth = max(1, depth)
        self.pin = self.device.type == "cuda"
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}  # cursor -> the host batches being built
        self._lock = threading.Lock()
        self._closed = False

    # ----- building (either thread) ----------------------------------------------------------
    def build(self, cursor: int, order: SampleOrder | PreparedOrder | None = None) -> list[Batch]:
        """This rank's micro-batches of the step at ``cursor``, on the host."""
        order = order or self.order
        positions = step_positions(cursor, self.global_batch, self.dp_rank, self.dp_size)
        mb = self.micro_batch
        out = []
        for k in range(len(positions) // mb):
            ids, x, y = order.batch(positions[k * mb:(k + 1) * mb])
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            out.append((ids, x, y))
        return out

    # ----- the trainer's side ----------------------------------------------------------------
    def get(self, cursor: int) -> list[Batch]:
        """The micro-batches of the step at ``cursor`` on the device; then start preparing the
        following step(s). An exception raised while preparing is raised here."""
        if self._closed:
            raise RuntimeError("StepBatches is closed")
        with self._lock:
            future = self._pending.pop(cursor, None)
            stale = [f for c, f in self._pending.items()]
            self._pending.clear()
        for f in stale:  # a resume or a jump: what was prepared is for another cursor
            f.cancel()
        if future is not None:
            host = future.result()  # re-raises the worker's exception
        else:
            # Built here on a fresh view, so it cannot race a worker still finishing a stale job.
            host = self.build(cursor, self.order.view())
        self._prefetch(cursor)
        return [(ids, self._to_device(x), self._to_device(y)) for ids, x, y in host]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t
        return t.to(self.device, non_blocking=self.pin)

    def _prefetch(self, cursor: int) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpcorch-prefetch")
        with self._lock:
            for ahead in range(1, self.depth + 1):
                nxt = cursor + ahead * self.global_batch
                self._pending[nxt] = self._pool.submit(self.build, nxt)

    def close(self) -> None:
        """Drop what is prepared and stop the worker thread (idempotent)."""
        self._closed = True
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for f in pending:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> StepBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
