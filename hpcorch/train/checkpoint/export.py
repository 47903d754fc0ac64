"""Export a checkpoint's model weights to one plain file for use outside hpcorch.

Read in this one process (no process group), whatever layout saved it: a DCP checkpoint's
shards are assembled into full tensors (:func:`hpcorch.train.checkpoint.dcpio.read_full`, files verified
against the commit record), a checkpoint of the format before DCP is read whole. The file holds
the canonical names of the plain GPT (``wte.weight``, ``blocks.<i>...``, ``ln_f.weight``); the
output layer is tied to the embedding and stored once, as ``wte.weight`` (as Hugging Face's GPT-2
files do): load it with ``strict=False`` or tie ``head.weight`` to it. ``.safetensors`` needs the
``safetensors`` package (``pip install 'hpcorch[export]'``); otherwise a ``torch.save`` file.
"""
from __future__ import annotations

from pathlib import Path

from hpcorch.train.checkpoint.checkpointer import _canonical_model
from hpcorch.train.checkpoint.store import CheckpointStore


def safetensors_available() -> bool:
    """Whether the ``safetensors`` package can be imported."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def export_weights(checkpoints: Path, step: int, out: Path) -> Path:
    """Write step ``step``'s model weights (full, canonical names) to ``out``: safetensors if
    ``out`` ends in ``.safetensors`` and the package is there, else ``torch.save`` (then a
    ``.safetensors`` name becomes ``.pt``). Returns the file written."""
    import torch

    state, _, record = CheckpointStore(checkpoints, rank=0, world_size=1).load(step)
    model = {name: _plain(name, t.detach().to("cpu").contiguous())
             for name, t in _canonical_model(state["model"]).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "hpcorch", "step": str(step), "tied": "head.weight=wte.weight"}
    if out.suffix == ".safetensors" and safetensors_available():
        from safetensors.torch import save_file

        save_file(model, str(out), metadata=meta)
        return out
    if out.suffix == ".safetensors":
        out = out.with_suffix(".pt")
    torch.save(model, out)
    return out


def _plain(name: str, tensor):
    """q, k and v as one ``nn.Linear(width, 3 * width)`` holds them (the trainer keeps them as
    ``(3, width, width)`` so that tensor parallelism splits whole heads): the same bytes."""
    if name.endswith("attn.qkv.weight") and tensor.dim() == 3:
        return tensor.reshape(-1, tensor.shape[-1])
    if name.endswith("attn.qkv.bias") and tensor.dim() == 2:
        return tensor.reshape(-1)
    return tensor
