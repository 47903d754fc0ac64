"""The trainer's own state: where training is, apart from the model and optimizer."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    """Counters of a run. ``state_dict`` holds what a checkpoint restores; ``restarts`` and
    ``steps_recomputed`` are counted in ``progress.json`` instead (a crash loses the
    checkpoint's newer steps, but not the knowledge that they were trained once)."""

    step: int = 0
    consumed_samples: int = 0  # the global data cursor (hpcorch.train.data)
    tokens: int = 0
    restarts: int = 0
    steps_recomputed: int = 0
    last_loss: float = float("nan")

    def state_dict(self) -> dict:
        """The part a checkpoint holds (in its commit record)."""
        return {"step": self.step, "consumed_samples": self.consumed_samples,
                "tokens": self.tokens, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's :meth:`state_dict`."""
        self.step = state["step"]
        self.consumed_samples = state["consumed_samples"]
        self.tokens = state["tokens"]
        self.last_loss = state["last_loss"]

    def advance(self, global_batch: int, seq_len: int) -> None:
        """Count one finished optimizer step of ``global_batch`` sequences."""
        self.step += 1
        self.consumed_samples += global_batch
        self.tokens += global_batch * seq_len
