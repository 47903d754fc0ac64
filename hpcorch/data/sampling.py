"""The global sample order of prepared data, in memory that does not grow with the corpus.

Two pure functions of a seed decide which sample a global position reads:

* :class:`Permutation`: a seeded bijection of ``[0, n)`` (a 4-round Feistel network over the
  next power of four, with cycle walking back into ``[0, n)``). It replaces the array of ``n``
  sample ids that the byte sources' :class:`~hpcorch.train.data.SampleOrder` draws per epoch
  (8 bytes per sample: 240 MB for 1 GB of uint16 tokens in windows of 32), at a few
  microseconds per sample looked up.
* :class:`Mixture`: which dataset of a weighted mixture each global position reads. Positions
  come in blocks of ``block`` positions; in every block dataset ``d`` holds ``counts[d]``
  positions (``block * weight[d]`` rounded by largest remainder, the same in every block), at
  places shuffled by ``PCG64([seed, block index])``. So the proportions hold within every block,
  and the ``k``-th position that reads dataset ``d`` is known without counting from the start:
  ``block_index * counts[d] + (its rank among d's positions in the block)``.

Nothing here depends on the number of ranks: a resume at any cursor, on any world size, reads
the same samples (hpcorch's exact-resume promise, docs/training.md).
"""
from __future__ import annotations

import math

import numpy as np

_M64 = (1 << 64) - 1
ROUNDS = 4
BLOCK = 1024       # the smallest block of mixture positions
BLOCK_SHARE = 100  # ... grown until the smallest dataset gets this many positions in each


def _mix64(z: int) -> int:
    """SplitMix64's finaliser: a 64-bit integer hash whose every output bit depends on every input bit."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class Permutation:
    """A seeded bijection of ``[0, n)``; ``key`` seeds it (``[seed, dataset, epoch]``)."""

    def __init__(self, n: int, key: list[int]):
        if n < 1:
            raise ValueError(f"expected a permutation of at least 1 item, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2  # the domain is 4**half >= n: under 4n, so under 4 walks per call on average
        self.mask = (1 << self.half) - 1
        rng = np.random.Generator(np.random.PCG64(key))
        self.keys = [int(k) for k in rng.integers(0, 2**63, size=ROUNDS, dtype=np.int64)]

    def _encrypt(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix64(right ^ k) & self.mask)
        return (left << self.half) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"{i} is outside [0, {self.n})")
        x = self._encrypt(i)
        while x >= self.n:  # cycle walking: a bijection of the domain restricted to [0, n)
            x = self._encrypt(x)
        return x


def largest_remainder(weights: list[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights`` (which sum to 1): floors, then one more to
    the largest remainders (ties to the earlier dataset)."""
    exact = [w * total for w in weights]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


class Mixture:
    """Global position -> (dataset, how many earlier positions read that dataset) for
    normalised ``weights``."""

    def __init__(self, weights: list[float], seed: int):
        self.weights, self.seed = list(weights), seed
        smallest = min(self.weights)
        self.block = max(BLOCK, math.ceil(BLOCK_SHARE / smallest)) if len(self.weights) > 1 else BLOCK
        self.counts = largest_remainder(self.weights, self.block)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def _layout(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The dataset of each position of ``block`` and each position's rank among its dataset's."""
        if self._cached is not None and self._cached[0] == block:
            return self._cached[1], self._cached[2]
        labels = np.repeat(np.arange(len(self.counts), dtype=np.uint16), self.counts)
        np.random.Generator(np.random.PCG64([self.seed, block])).shuffle(labels)
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        ranks = np.empty(self.block, dtype=np.int64)
        ranks[order] = np.arange(self.block) - np.repeat(starts, self.counts)
        self._cached = (block, labels, ranks)
        return labels, ranks

    def locate(self, position: int) -> tuple[int, int]:
        """``(d, k)``: ``position`` reads dataset ``d``'s ``k``-th position (0-based)."""
        if len(self.counts) == 1:
            return 0, position
        block, offset = divmod(position, self.block)
        labels, ranks = self._layout(block)
        d = int(labels[offset])
        return d, block * self.counts[d] + int(ranks[offset])
