"""Helpers for the Hugging Face tests: load a folder with real transformers (offline, capturing
what it logs and warns) and compare logits with hpcorch's model."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only local folders, never the hub


def load_hf(folder: Path):
    """``AutoModelForCausalLM.from_pretrained(folder)`` in fp32 eval mode, checked: no missing,
    unexpected or mismatched keys, and no warning (logged or raised) while loading."""
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
            model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    assert {k: v for k, v in info.items() if v} == {}, info
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught if "transformers" in w.filename] == []
    return model.float().eval()


def max_logit_diff(ours, theirs, vocab: int, seq_len: int) -> float:
    """The largest difference of the two models' logits on random token ids (fp32, CPU)."""
    import torch

    idx = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours.eval()(idx)[0]
        b = theirs(idx).logits
    return float((a - b).abs().max())
