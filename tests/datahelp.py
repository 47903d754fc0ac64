"""Prepared datasets written by the tests themselves, through the on-disk contract
(:class:`~hpcorch.data.format.ShardWriter` + :class:`~hpcorch.data.index.DatasetIndex`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcorch.data.format import ShardWriter
from hpcorch.data.index import DatasetIndex, TokenizerRef

# A made-up tokenizer: ids 0..vocab-2 are text, vocab-1 ends a document.
TOY = TokenizerRef("toy", "ab" * 32, 512, 511)


def documents(count: int, seed: int, low: int = 0, high: int = 500, min_len: int = 5,
              max_len: int = 120) -> list[np.ndarray]:
    """``count`` documents of random ids in ``[low, high)``, of random lengths."""
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=int(rng.integers(min_len, max_len))) for _ in range(count)]


def write_dataset(folder: Path, docs: list[np.ndarray], tokenizer: TokenizerRef = TOY, dtype: str = "uint16",
                  shards: int = 3) -> Path:
    """``docs`` (each followed by the end-of-text id) in ``shards`` shards of about equal
    document counts, and ``dataset.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    per = -(-len(docs) // shards)
    for i in range(shards):
        with ShardWriter(folder / f"shard_{i:05d}", dtype) as w:
            for doc in docs[i * per:(i + 1) * per]:
                w.add(np.append(doc, tokenizer.eot_id))
        infos.append(w.info)
    DatasetIndex(tokenizer=tokenizer, dtype=dtype, shards=infos).save(folder)
    return folder


def stream(docs: list[np.ndarray], eot: int = TOY.eot_id) -> np.ndarray:
    """The token stream a dataset of ``docs`` holds."""
    return np.concatenate([np.append(d, eot) for d in docs]).astype(np.int64)
