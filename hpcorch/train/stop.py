"""Stopping at a step boundary on a signal, with every rank agreeing (steps 2 and 3 of the
protocol in :mod:`hpcorch.protocol`).

The handler only records the signal and when it came. At the end of each step the flag rides
on the loss all-reduce that happens anyway, so a signal costs no extra collective until one
arrives; then one MAX all-reduce agrees on which signal it was (the submission layer acts on
it). Every rank issues exactly this sequence, so none can wait in a collective the others skip.
"""
from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist

from hpcorch import protocol


class StopAgreement:
    """The stop flag of one rank and the ranks' agreement on it."""

    def __init__(self, signals: tuple[int, ...], device: torch.device, world_size: int):
        self.signals, self.device, self.world_size = tuple(signals), device, world_size
        self.requested = 0          # the signal this rank received (0: none)
        self.signal_time: float | None = None
        self.agreed = False         # some rank received a signal: stop after this step
        self.agreed_signal = 0      # the highest signal number any rank received

    def install(self) -> None:
        """Route the stop signals to :meth:`on_signal`; a requeue signal that came before (kept
        by :func:`hpcorch.protocol.catch_early`) stops the ranks at the first step boundary."""
        for signum in self.signals:
            signal.signal(signum, self.on_signal)
        early = protocol.early_signal()
        if early is not None and early[0] in self.signals and not self.requested:
            self.requested, self.signal_time = early

    def committed(self) -> None:
        """The stop's checkpoint is committed on every rank: nothing is left to protect. From
        now on SIGTERM (the kill that follows a requeue or a cancel) ends this rank at once;
        caught as a stop request it would be waited out until Slurm's SIGKILL (``KillWait``,
        30 s), holding the nodes and delaying the next attempt."""
        if signal.SIGTERM in self.signals:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def on_signal(self, signum: int, _frame=None) -> None:
        """Only a flag: acting inside a handler could interrupt a collective or a write."""
        self.requested = signum
        self.signal_time = time.time()

    def reduce_loss(self, local_loss: torch.Tensor, weight: float = 1.0) -> float:
        """The mean loss over ranks, from one all-reduce that also carries the stop flag: each
        rank adds ``local_loss * weight`` (under pipeline parallelism only the last stage has a
        loss; its weight is pp and the others' 0, so the sum over the world still divides by
        the world size). Sets :attr:`agreed` and, if a stop is agreed, :attr:`agreed_signal`."""
        if weight != 1.0:
            local_loss = local_loss * weight
        flags = torch.stack([local_loss, torch.tensor(float(self.requested), device=self.device)])
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        loss = flags[0].item() / self.world_size
        self.agreed = flags[1].item() > 0
        if self.agreed:
            agreed = torch.tensor(float(self.requested), device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            self.agreed_signal = int(agreed.item())
        return loss
