"""What of a job a checkpoint records, and which changes a run may make when it continues one.

Every checkpoint's commit record holds :func:`training_config`: the job's settings that decide
what the weights become, flattened to dotted keys as ``--set`` spells them. A run that continues
a checkpoint under another config would end with weights that match neither config, so the
difference is refused (:func:`check_config_change`) unless the user accepts it explicitly
(``--allow-config-change``).

The split, decided key by key:

* **Recorded** (``trainer.*`` by default, so a key added later is guarded until classified):
  the model, the data, the seed, the global batch, the optimizer and its schedule
  (``lr``, ``min_lr``, ``warmup_steps``, ``weight_decay``, ``betas``, ``grad_clip``), the length
  of the schedule ``steps`` (the cosine decay is a function of it), ``precision`` and
  ``grad_compression``: each changes the arithmetic of every later step.
* **Not recorded** (:data:`NOT_RECORDED`): what a restart may legitimately change without
  touching the result. The layout (``resources.*``: nodes, tasks, time, partition;
  ``trainer.sharding`` and ``trainer.parallel``: checkpoints reshard on load; and
  ``trainer.micro_batch``, which has to follow the number of ranks to keep the global batch);
  where and how often checkpoints go (``trainer.checkpoint.*``); evaluation and logging
  (``eval_interval``, ``eval_batches``, ``log_interval``, ``loggers``); speed switches that recompute the
  same values (``activation_checkpointing``, ``compile``, ``loss_chunk``: up to fp32 summation order);
  the collective timeout; and the job's ``name``, ``description``, ``environment`` and ``requeue`` budgets.
* **Never accepted** (:data:`FIXED`), not even with the flag: the model (another shape cannot
  load), the data, the seed and the global batch (the checkpoint's sample cursor counts
  samples of *this* seeded order in steps of *this* batch) and the optimizer's kind (another
  optimizer's state cannot load). Continuing under those is a new run: another run directory.

Pure data in, pure data out: no torch, so ``hpcorch submit`` checks on the login node.
"""
from __future__ import annotations

import json
from typing import Any

from hpcorch.errors import HpcorchError
from hpcorch.spec.model import recorded
from hpcorch.spec.schema import to_dict

FLAG = "--allow-config-change"

NOT_RECORDED = ("trainer.micro_batch", "trainer.sharding", "trainer.parallel", "trainer.checkpoint",
                "trainer.eval_interval", "trainer.eval_batches",
                "trainer.log_interval", "trainer.loggers", "trainer.activation_checkpointing", "trainer.compile",
                "trainer.loss_chunk", "trainer.collective_timeout_s", "trainer.init_from")
FIXED = ("trainer.model", "trainer.data", "trainer.seed", "trainer.global_batch", "trainer.optimizer.name")


class ConfigChanged(HpcorchError):
    """A run would continue a checkpoint under a config other than the one it was trained with."""


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _flatten(data: dict, prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def training_config(job) -> dict[str, Any]:
    """The recorded part of ``job`` (a JobSpec) as {dotted key: value}, in its JSON form (a
    tuple reads back as a list), so that a fresh value compares equal to one read back."""
    # The default family's model is recorded without its kind, as before there were families.
    flat = _flatten({**to_dict(job.trainer), "model": recorded(job.trainer.model)}, "trainer")
    return json.loads(json.dumps({k: v for k, v in flat.items() if not _under(k, NOT_RECORDED)}))


def differences(recorded: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every recorded key whose value differs (absent: ``None``)."""
    return [f"{k}: {_show(recorded.get(k))} -> {_show(current.get(k))}"
            for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list, dict)) or value is None else str(value)


def check_config_change(recorded: dict, current: dict, where: str, allow: bool = False,
                        accepted: dict | None = None) -> list[str]:
    """The differences between the config ``recorded`` with a checkpoint (``where`` names it)
    and ``current``, if the run may go on under them; raise :class:`ConfigChanged` if not.

    A change of a :data:`FIXED` key is always refused. Any other change needs ``allow`` (the
    flag, this time) or ``accepted`` equal to ``current`` (the run directory's record that the
    user accepted exactly this config earlier: a requeued attempt of the accepted run goes on).
    """
    changed = [k for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]
    if not changed:
        return []
    fixed = [k for k in changed if _under(k, FIXED)]
    if fixed:
        lines = differences({k: recorded.get(k) for k in fixed}, {k: current.get(k) for k in fixed})
        raise ConfigChanged(f"{where} does not match this job's config ({', '.join(lines)}); it cannot be "
                            f"continued under another model, data, seed, global batch or optimizer, even "
                            f"with {FLAG}: use another --run-dir or trainer.checkpoint.dir to start afresh")
    lines = differences(recorded, current)
    if allow or accepted == current:
        return lines
    raise ConfigChanged(f"{where} was trained with another config ({', '.join(lines)}); pass {FLAG} to "
                        f"continue it under the new one, or use another --run-dir to start afresh")
