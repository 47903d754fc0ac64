"""Export a checkpoint's model weights to one plain file for use outside hpcorch.

Read in this one process (no process group), whatever layout saved it: a DCP checkpoint's
shards are assembled into full tensors (:func:`hpcorch.train.checkpoint.dcpio.read_full`, files verified
against the commit record), a checkpoint of the format before DCP is read whole. The file holds
the canonical names of the whole model (the GPT's ``wte.weight``, ``blocks.<i>...``,
``ln_f.weight``) in the shapes its family exports (:attr:`~hpcorch.train.models.spec.ModelParts.export`);
a tied weight is stored once under its canonical name (the GPT's output layer as ``wte.weight``,
as Hugging Face's GPT-2 files do): load it with ``strict=False`` or tie ``head.weight`` to it.
The family is the commit record's ``trainer.model.kind`` (none recorded: the default, GPT). ``.safetensors`` needs the
``safetensors`` package (``pip install 'hpcorch[export]'``); otherwise a ``torch.save`` file.

:func:`export_hf` writes a Hugging Face folder instead (``--format hf``): the family's
:class:`~hpcorch.train.models.spec.HFMapping` renames and reshapes the same canonical state, and
:mod:`hpcorch.train.checkpoint.hf` writes it as transformers' ``save_pretrained`` would.
"""
from __future__ import annotations

from pathlib import Path

from hpcorch.spec.model import DEFAULT_KIND
from hpcorch.train.checkpoint.checkpointer import _canonical_model
from hpcorch.train.checkpoint.hf import DEFAULT_SHARD_SIZE, write_folder
from hpcorch.train.checkpoint.store import CheckpointStore
from hpcorch.train.models import ModelSpec, get_model_spec


def safetensors_available() -> bool:
    """Whether the ``safetensors`` package can be imported."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def full_model(checkpoints: Path, step: int) -> tuple[ModelSpec, dict, dict]:
    """Step ``step``'s family, whole model state (canonical names, on the CPU, in the shapes
    the trainer keeps) and commit record."""
    state, _, record = CheckpointStore(checkpoints, rank=0, world_size=1).load(step)
    config = record.get("config") or {}
    family = get_model_spec(config.get("trainer.model.kind", DEFAULT_KIND))
    model = {name: t.detach().to("cpu").contiguous()
             for name, t in _canonical_model(state["model"], _recorded_tied(family, config)).items()}
    return family, model, record


def export_weights(checkpoints: Path, step: int, out: Path) -> Path:
    """Write step ``step``'s model weights (full, canonical names) to ``out``: safetensors if
    ``out`` ends in ``.safetensors`` and the package is there, else ``torch.save`` (then a
    ``.safetensors`` name becomes ``.pt``). Returns the file written."""
    import torch

    family, model, record = full_model(checkpoints, step)
    tied = _recorded_tied(family, record.get("config") or {})
    export = family.parts().export
    model = {name: export(name, t) for name, t in model.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "hpcorch", "step": str(step)}
    if tied is not None:
        meta["tied"] = f"{tied[1]}={tied[0]}"
    if out.suffix == ".safetensors" and safetensors_available():
        from safetensors.torch import save_file

        save_file(model, str(out), metadata=meta)
        return out
    if out.suffix == ".safetensors":
        out = out.with_suffix(".pt")
    torch.save(model, out)
    return out



def _recorded_tied(family: ModelSpec, config: dict) -> tuple[str, str] | None:
    """The tied weight's names for the model the commit record describes (an untied Llama ties
    none); a record without the model's keys (the oldest checkpoints) means the family's default."""
    try:
        cfg = recorded_model({"config": config}, family, fallback=family.config_cls())
    except (TypeError, ValueError):
        cfg = family.config_cls()
    return family.tied_names(cfg)


def recorded_model(record: dict, family: ModelSpec, fallback=None):
    """The model config a checkpoint was trained with: its commit record's ``trainer.model.*``
    (the kind left out for the default family), or ``fallback`` (the run's job) for checkpoints
    written before configs were recorded."""
    prefix = "trainer.model."
    fields = {k[len(prefix):]: v for k, v in (record.get("config") or {}).items() if k.startswith(prefix)}
    if not fields:
        if fallback is None:
            raise ValueError("the checkpoint records no model config")
        return fallback
    return family.config_cls(**{**fields, "kind": family.kind})


def export_hf(checkpoints: Path, step: int, out: Path, max_shard_size: str | int = DEFAULT_SHARD_SIZE,
              fallback_model=None, eos_token_id: int | None = None) -> list[Path]:
    """Write step ``step``'s model to the Hugging Face folder ``out`` (config, weights sharded
    above ``max_shard_size``, generation config). The model config is the checkpoint's own
    (:func:`recorded_model`). ``eos_token_id`` (the run's tokenizer's end-of-text id) goes into
    both configs as end and start of text, as GPT-2's own, so ``generate()`` stops there.
    Returns the files written."""
    family, model, record = full_model(checkpoints, step)
    mapping = family.hf()
    cfg = recorded_model(record, family, fallback_model)
    model = family.parts().upgrade_state(model, cfg)  # checkpoints of older shapes
    config, tensors = mapping.to_hf(model, cfg)
    if eos_token_id is not None:
        config.update(bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    return write_folder(out, config, tensors, max_shard_size,
                        generation={"_from_model_config": True, "bos_token_id": config.get("bos_token_id"),
                                    "eos_token_id": config.get("eos_token_id")})
