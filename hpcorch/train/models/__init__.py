"""The registry of model families: ``trainer.model.kind`` -> :class:`ModelSpec`.

A family is one folder here (``gpt/``, ``llama/``: its torch-free ``shapes``, its module and tensor-parallel
plan) whose ``__init__`` defines ``SPEC``, plus one entry in :data:`FAMILIES` and its config class
in :mod:`hpcorch.spec.model`. Importing this package does not import torch (the planner uses it).
"""
from __future__ import annotations

from hpcorch.train.models import gpt, llama
from hpcorch.train.models.spec import BlockActivations, HFMapping, ModelParts, ModelSpec, Shapes

__all__ = ["BlockActivations", "FAMILIES", "HFMapping", "ModelParts", "ModelSpec", "Shapes", "get_model_spec",
           "spec_of"]

FAMILIES: dict[str, ModelSpec] = {spec.kind: spec for spec in (gpt.SPEC, llama.SPEC)}


def get_model_spec(kind: str) -> ModelSpec:
    """The family named ``kind``; a job's kind was checked when it loaded, so an unknown one
    here is a caller's mistake."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(FAMILIES))}") from None


def spec_of(cfg) -> ModelSpec:
    """The family of a model config (``trainer.model``)."""
    return get_model_spec(cfg.kind)
