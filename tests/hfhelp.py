"""Helpers for the Hugging Face tests: load a folder with real transformers (offline, capturing
what it logs and warns) and compare logits with hpcorch's model."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only local folders, never the hub


@contextlib.contextmanager
def no_warnings():
    """Fails the block if transformers logs a warning or raises a Python warning inside it."""
    import transformers

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logger = transformers.utils.logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught if "transformers" in w.filename] == []


def load_hf(folder: Path):
    """``AutoModelForCausalLM.from_pretrained(folder)`` in fp32 eval mode, checked: no missing,
    unexpected or mismatched keys, and no warning (logged or raised) while loading."""
    import transformers

    with no_warnings():
        model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info
    return model.float().eval()


def load_hf_tokenizer(folder: Path):
    """``AutoTokenizer.from_pretrained(folder)``, checked: no warning while loading."""
    import transformers

    with no_warnings():
        return transformers.AutoTokenizer.from_pretrained(str(folder))


def ours_at(run_dir: Path, step: int):
    """Our model with step ``step``'s weights (assembled whole from the checkpoint), and its config."""
    from hpcorch.train.checkpoint.export import full_model, recorded_model
    from hpcorch.train.parallelize.build import load_whole

    family, state, record = full_model(run_dir / "checkpoints", step)
    cfg = recorded_model(record, family)
    model = family.parts().build(cfg)
    load_whole(model, state, family.tied, "test")
    return model, cfg


def max_logit_diff(ours, theirs, vocab: int, seq_len: int) -> float:
    """The largest difference of the two models' logits on random token ids (fp32, CPU)."""
    import torch

    idx = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours.eval()(idx)[0]
        b = theirs(idx).logits
    return float((a - b).abs().max())
