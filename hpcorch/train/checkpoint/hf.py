"""Hugging Face checkpoint folders: what ``hpcorch export --format hf`` writes and
``trainer.init_from`` reads.

A folder as transformers' ``save_pretrained`` leaves it: ``config.json``, the weights as
``model.safetensors`` or, above ``max_shard_size``, as ``model-0000k-of-0000n.safetensors`` with
``model.safetensors.index.json`` (its ``weight_map``), and ``generation_config.json``. The
family's :class:`~hpcorch.train.models.spec.HFMapping` gives the names, layouts and config keys;
this module only moves files, so it needs ``safetensors`` but never ``transformers``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
GENERATION = "generation_config.json"
DEFAULT_SHARD_SIZE = "5GB"  # transformers' save_pretrained default
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class HFFolderError(ValueError):
    """A folder that is not a Hugging Face checkpoint this code can read (one line, says what)."""


def parse_size(size: str | int) -> int:
    """Bytes of ``5GB``, ``500MB``, ``2GiB`` or a plain number (transformers' units: GB = 10**9)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", size.upper())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"expected a size such as 5GB, 500MB or 2GiB, got {size!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def _require_safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise HFFolderError("Hugging Face checkpoints need the safetensors package "
                            "(pip install 'hpcorch[hf]')") from None
    return safetensors.torch


def shards(tensors: dict, max_bytes: int) -> list[dict]:
    """The tensors in file order, cut into shards of at most ``max_bytes`` each (a tensor larger
    than that alone in its shard), as transformers cuts them."""
    out: list[dict] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if out[-1] and size + nbytes > max_bytes:
            out.append({})
            size = 0
        out[-1][name] = t
        size += nbytes
    return out


def write_folder(out: Path, config: dict, tensors: dict, max_shard_size: str | int = DEFAULT_SHARD_SIZE,
                 generation: dict | None = None) -> list[Path]:
    """Write a checkpoint folder ``out``; returns the files written (config first)."""
    st = _require_safetensors()
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("model-*-of-*.safetensors"), out / WEIGHTS, out / INDEX]:
        stale.unlink(missing_ok=True)  # an earlier export's shards would join this one's
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    parts = shards(tensors, parse_size(max_shard_size))
    written = [out / CONFIG, out / GENERATION]
    written[0].write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    written[1].write_text(json.dumps(generation or {"_from_model_config": True}, indent=2) + "\n")
    meta = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(parts) == 1:
        st.save_file(parts[0], str(out / WEIGHTS), metadata=meta)
        return [*written, out / WEIGHTS]
    weight_map = {}
    for k, part in enumerate(parts, 1):
        path = out / f"model-{k:05d}-of-{len(parts):05d}.safetensors"
        st.save_file(part, str(path), metadata=meta)
        weight_map.update(dict.fromkeys(part, path.name))
        written.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return [*written, out / INDEX]


def read_config(folder: Path) -> dict:
    """``config.json`` of a checkpoint folder (a missing folder or file, or bad JSON: the error)."""
    if not folder.is_dir():
        raise HFFolderError(f"no such folder: {folder}")
    try:
        return json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise HFFolderError(f"{folder} holds no {CONFIG}") from None
    except ValueError as exc:
        raise HFFolderError(f"{folder / CONFIG} is not JSON: {exc}") from None


def read_tensors(folder: Path) -> dict:
    """Every tensor of a checkpoint folder, sharded or not (on the CPU)."""
    st = _require_safetensors()
    if (folder / INDEX).is_file():
        try:
            files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HFFolderError(f"{folder / INDEX} is no shard index ({type(exc).__name__}: {exc})") from None
    elif (folder / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise HFFolderError(f"{folder} holds no {WEIGHTS} or {INDEX}")
    from safetensors import SafetensorError

    tensors: dict = {}
    for name in files:
        try:
            tensors.update(st.load_file(str(folder / name)))
        except (OSError, SafetensorError) as exc:  # missing, unreadable, cut short or not safetensors
            raise HFFolderError(f"{folder / name} cannot be read as safetensors: {exc}") from None
    return tensors


def init_state(folder: Path, cfg, family) -> dict:
    """The canonical state of the checkpoint in ``folder`` for a model ``cfg`` of ``family`` (a
    :class:`~hpcorch.train.models.spec.ModelSpec`), checked: the family's ``model_type``, and
    what the checkpoint fixes of the config (:attr:`HFMapping.fixed`) equal to ``cfg``'s."""
    config = read_config(folder)
    try:
        mapping = family.hf()
    except ValueError as exc:
        raise HFFolderError(str(exc)) from None
    if config.get("model_type") != mapping.model_type:
        raise HFFolderError(f"{folder} holds model_type {config.get('model_type')!r}, but trainer.model.kind "
                            f"{family.kind!r} reads {mapping.model_type!r}")
    try:
        theirs, state = mapping.from_hf(config, read_tensors(folder), cfg)
    except KeyError as exc:
        raise HFFolderError(f"{folder} lacks {exc.args[0]!r}") from None
    except ValueError as exc:
        raise HFFolderError(f"{folder}: {exc}") from None
    ours = mapping.fixed(cfg)
    differ = [f"trainer.model.{key} is {ours.get(key)} but the checkpoint's is {value}"
              for key, value in mapping.fixed(theirs).items() if value != ours.get(key)]
    if differ:
        raise HFFolderError(f"{folder} does not fit the job's model: " + "; ".join(differ))
    return state
