"""Training on prepared datasets (``trainer.data.source: prepared``): one, or a weighted mixture.

Samples are nanoGPT's windows: sample ``s`` of a dataset's split is tokens
``[s*T, s*T + T + 1)`` of its token stream (documents back to back, each ending with the
end-of-text id). Global position ``g`` reads dataset ``d``'s ``k``-th position
(:class:`~hpcorch.data.sampling.Mixture`; ``d = 0, k = g`` for one dataset), which is sample
``perm(k mod n_d)`` of epoch ``k // n_d`` of that dataset, ``perm`` a seeded bijection of its
``n_d`` samples per epoch (:class:`~hpcorch.data.sampling.Permutation`). A small dataset of a
mixture is therefore repeated, epoch after epoch, while a large one is still in its first.

Sample ids (what ``HPCORCH_SAMPLE_TRACE`` records) number the samples of all datasets in
mixture order: dataset ``d``'s sample ``s`` is ``base[d] + s``.

Memory: the shards are mapped, never read whole; a rank keeps per dataset a few shard
boundaries and four round keys, and per mixture one block of positions (9 bytes a position:
9 KB for the usual block of 1,024).
"""
from __future__ import annotations

import numpy as np
import torch

from hpcorch.data.index import TokenizerRef
from hpcorch.data.reader import (
    DatasetError,
    PreparedDataset,
    TokenRange,
    check_tokenizer,
    check_vocab,
    load_index,
    wanted_tokenizer,
)
from hpcorch.data.sampling import Mixture, Permutation


class PreparedOrder:
    """The seeded global order of one split of prepared data: ``ranges`` (one per dataset,
    named in errors by ``names``: (job key, what) each) mixed by normalised ``weights``."""

    def __init__(self, ranges: list[TokenRange], weights: list[float], seq_len: int, seed: int,
                 names: list[tuple[str, str]] | None = None):
        self.ranges, self.weights, self.seq_len, self.seed = ranges, list(weights), seq_len, seed
        self.names = names or [("data.path", f"dataset {i}") for i in range(len(ranges))]
        self.sizes = [(len(r) - 1) // seq_len for r in ranges]
        for (key, what), r, n in zip(self.names, ranges, self.sizes, strict=True):
            if n < 1:
                raise DatasetError(key, f"{what}: {len(r)} tokens are too few for sequences of {seq_len}")
        self.base = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.num_samples = self.base[-1]
        self.mixture = Mixture(self.weights, seed)
        self._perms: dict[int, tuple[int, Permutation]] = {}  # dataset -> (epoch, its permutation)

    def view(self) -> PreparedOrder:
        """The same order with caches of its own (for another thread)."""
        return PreparedOrder(self.ranges, self.weights, self.seq_len, self.seed, self.names)

    def _permutation(self, d: int, epoch: int) -> Permutation:
        cached = self._perms.get(d)
        if cached is None or cached[0] != epoch:
            cached = self._perms[d] = (epoch, Permutation(self.sizes[d], [self.seed, d, epoch]))
        return cached[1]

    def sample_id(self, position: int) -> int:
        d, k = self.mixture.locate(position)
        epoch, offset = divmod(k, self.sizes[d])
        return self.base[d] + self._permutation(d, epoch)(offset)

    def dataset_of(self, sample: int) -> int:
        """Which dataset a sample id belongs to."""
        return int(np.searchsorted(self.base, sample, side="right")) - 1

    def window(self, sample: int) -> np.ndarray:
        d = self.dataset_of(sample)
        T = self.seq_len
        return self.ranges[d].window((sample - self.base[d]) * T, T + 1)

    def batch(self, positions: range) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        ids = [self.sample_id(p) for p in positions]
        data = torch.from_numpy(np.stack([self.window(i) for i in ids]))
        return ids, data[:, :-1], data[:, 1:]


def open_prepared(spec, seq_len: int, seed: int, vocab: int | None = None,
                  tokenizer: TokenizerRef | str | None = None) -> tuple[PreparedOrder, PreparedOrder, TokenizerRef]:
    """(train, validation, tokenizer) of a ``prepared`` data section; ``tokenizer`` is the
    job's (a loaded tokenizer's ref, or its name), ``vocab`` the model's. Raises
    :class:`DatasetError` keyed under ``trainer``."""
    named = [(key, folder, load_index(key, folder)) for key, folder in spec.datasets]
    val_named = [("val_path", spec.val_path, load_index("val_path", spec.val_path))] if spec.val_path else []
    ref = check_tokenizer(named + val_named, tokenizer if tokenizer is not None else wanted_tokenizer(spec.tokenizer))
    if vocab is not None:
        check_vocab(ref, vocab)
    datasets = [PreparedDataset.open(key, folder, index) for key, folder, index in named]
    names = [(f"data.{d.key}", str(d.folder)) for d in datasets]
    if val_named:
        val_set = PreparedDataset.open(*val_named[0])
        val = PreparedOrder([val_set.whole()], [1.0], seq_len, seed + 1, [("data.val_path", str(val_set.folder))])
        train = PreparedOrder([d.whole() for d in datasets], spec.weights, seq_len, seed, names)
        return train, val, ref
    splits = [d.split(spec.val_fraction) for d in datasets]
    train = PreparedOrder([t for t, _ in splits], spec.weights, seq_len, seed, names)
    val_names = [("data.val_fraction", f"{d.folder}'s held-out documents") for d in datasets]
    val = PreparedOrder([v for _, v in splits], spec.weights, seq_len, seed + 1, val_names)
    return train, val, ref
