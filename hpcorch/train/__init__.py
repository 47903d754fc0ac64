"""The trainer that hpcorch jobs run. Importing this package does not import torch.

One rank starts in :mod:`.rank` (``run_rank``; ``python -m hpcorch.train`` wraps it) and runs a
:class:`.trainer.Trainer`, built from components:

- :mod:`.models`: the registry of model families (``trainer.model.kind``), one folder each (``gpt/``)
- :mod:`.parallelize`: the model, seeded and laid out (DDP, FSDP2, or tp/pp/HSDP on a device mesh),
  compiled, autocast, no-sync
- :mod:`.optim`: the optimizer and the LR schedule
- :mod:`.data`: the seeded global sample order and its cursor
- :mod:`.checkpoint`: what a checkpoint holds, the recorded-config check, restore
- :mod:`.store`: crash-safe checkpoint files (per-rank parts, commit marker, async, pruning)
- :mod:`.diskspace`: which file system a path is on and how full, for a failed save's one line
- :mod:`.stop`: the signal flag and the ranks' agreement to stop at a step boundary
- :mod:`.runlog`: metrics, events, progress, summary and console lines, through sinks
- :mod:`.state`: the trainer's counters (step, samples, tokens, restarts)
- :mod:`.determinism`: the rules that make restarts bit-exact, and their helpers
- :mod:`.faults`: fault injection and tracing hooks for tests
- :mod:`.distributed`: joining the process group; :mod:`.launch`: ``hpcorch train``'s launcher
"""
