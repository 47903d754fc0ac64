"""Token data with one seeded global sample order and a global consumed-samples cursor.

Sample ``i`` is the window ``tokens[i*T : i*T + T + 1]``. Global position ``g`` maps to a sample
through a per-epoch permutation seeded by (seed, epoch), so the sequence of samples depends only
on the seed and the data, never on the number of ranks. A step consumes ``global_batch``
consecutive positions; rank ``r`` reads its contiguous share of them. Resuming at any cursor on
any world size therefore continues the same sequence: nothing repeated, nothing skipped.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

from hpcorch.data.format import token_dtype
from hpcorch.data.reader import DatasetError, check_vocab
from hpcorch.data.tokenizer import TokenizerError, load_tokenizer
from hpcorch.errors import ConfigError
from hpcorch.train.prepared import open_prepared
from hpcorch.train.tokencache import TokenCache, fingerprint

_SEPARATOR = b"\n\x00\n"  # between files: a byte that text never contains


def stdlib_files() -> list[Path]:
    """The running interpreter's standard library sources, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    # Never descend into site-packages (it lies under the stdlib folder and holds torch and
    # every other installed package: listing it took most of the start-up's data time).
    # Same files as ``root.rglob("*.py")`` outside site-packages: symlinked folders are not
    # followed, hidden files count.
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "site-packages"]
        found += (Path(folder) / f for f in files if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.as_posix())


def read_bytes(files: list[Path], max_bytes: int) -> np.ndarray:
    chunks, total = [], 0
    for f in files:
        data = f.read_bytes()
        chunks.append(data + _SEPARATOR)
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


class DataError(ConfigError):
    """The data a job names cannot be used (missing, empty, unreadable, too short): one line
    naming the job, the ``trainer.data`` key and the file."""


def tokenize_files(files: list[Path], max_bytes: int, tokenizer) -> np.ndarray:
    """Text files as documents of a named ``tokenizer``, each followed by its end-of-text id,
    up to ``max_bytes`` of text (the last file cut there; a character cut in two decodes as
    U+FFFD). uint16 ids when the vocabulary fits, else int32."""
    dtype = token_dtype(tokenizer.vocab_size)
    docs, total = [], 0
    for f in files:
        data = f.read_bytes()[:max_bytes - total]
        total += len(data)
        ids = tokenizer.encode(data.decode("utf-8", errors="replace"))
        docs.append(np.asarray([*ids, tokenizer.eot_id], dtype=dtype))
        if total >= max_bytes:
            break
    return np.concatenate(docs)


def load_tokens(spec, path: str | None = None, cache: TokenCache | None = None, tokenizer=None) -> np.ndarray:
    """All tokens of a job's ``trainer.data`` section (byte-level, a named ``tokenizer``'s ids,
    or the ids of a .bin file), read from ``path`` (default ``spec.path``); text through
    ``cache`` when given (the same tokens, mapped from a file built once). Raises OSError /
    ValueError on bad files; the :class:`DataSource` turns them into a :class:`DataError`."""
    path = spec.path if path is None else path
    if spec.source == "bin":
        dtype = np.dtype(spec.tokens or "uint16")
        size = Path(path).stat().st_size  # FileNotFoundError before numpy's traceback
        if size < dtype.itemsize or size % dtype.itemsize:
            shape = "an even, nonzero size" if dtype.itemsize == 2 else f"a nonzero multiple of {dtype.itemsize} bytes"
            raise ValueError(f"{path} holds {size} bytes; expected {dtype.name} tokens ({shape}; "
                             "trainer.data.tokens names the width)")
        return np.memmap(path, dtype=dtype, mode="r")
    files = stdlib_files() if spec.source == "stdlib" else text_files(Path(path))
    if not files:
        raise FileNotFoundError(f"no text files under {path}")
    if tokenizer is not None:
        def build():
            return tokenize_files(files, spec.max_bytes, tokenizer)

        if cache is None:
            return build()
        name = f"{tokenizer.name}:{tokenizer.sha256}"
        return cache.tokens(fingerprint(spec.source, files, spec.max_bytes, 0, name), build,
                            token_dtype(tokenizer.vocab_size), name)
    if cache is None:
        return read_bytes(files, spec.max_bytes)
    key = fingerprint(spec.source, files, spec.max_bytes, len(_SEPARATOR))
    return cache.tokens(key, lambda: read_bytes(files, spec.max_bytes))


def _checked(job: str, key: str, make):
    """``make()``, with a file or size problem turned into one :class:`DataError` line."""
    try:
        return make()
    except OSError as exc:
        what = exc.strerror or str(exc)
        raise DataError(job, key, f"{what}: {exc.filename}" if exc.filename else what) from None
    except ValueError as exc:
        raise DataError(job, key, str(exc)) from None


class SampleOrder:
    """The seeded global order of the samples of one split."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.num_samples = (len(tokens) - 1) // seq_len
        if self.num_samples < 1:
            raise ValueError(f"{len(tokens)} tokens are too few for sequences of {seq_len}")
        self._epoch, self._perm = -1, None

    def view(self) -> SampleOrder:
        """The same order with a permutation cache of its own (for another thread)."""
        return SampleOrder(self.tokens, self.seq_len, self.seed)

    def sample_id(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._epoch, self._perm = epoch, rng.permutation(self.num_samples)
        return int(self._perm[offset])

    def batch(self, positions: range) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        ids = [self.sample_id(p) for p in positions]
        T = self.seq_len
        rows = np.stack([np.asarray(self.tokens[i * T: i * T + T + 1], dtype=np.int64) for i in ids])
        data = torch.from_numpy(rows)
        return ids, data[:, :-1], data[:, 1:]


class DataSource:
    """Train and validation splits: the last ``val_fraction`` of the tokens is validation, or,
    with ``val_path``, the tokens of that file (nanoGPT's ``train.bin`` + ``val.bin``); for
    prepared datasets see :mod:`.prepared`. ``job`` names the job in errors; ``cache`` keeps
    text sources' tokens (see :mod:`.tokencache`); ``vocab``, the model's, is checked against
    the tokenizer's ids where the data knows them."""

    def __init__(self, spec, seq_len: int, seed: int, job: str = "job", cache: TokenCache | None = None,
                 vocab: int | None = None):
        self.tokenizer = None  # the TokenizerRef of a prepared dataset or a named tokenizer
        if spec.source == "prepared":
            try:
                self.train, self.val, self.tokenizer = open_prepared(spec, seq_len, seed, vocab)
            except DatasetError as exc:
                raise DataError(job, f"trainer.{exc.key}", exc.message) from None
            return
        tokenizer = self._named_tokenizer(spec, job, vocab)
        train = _checked(job, "trainer.data.path", lambda: load_tokens(spec, cache=cache, tokenizer=tokenizer))
        if spec.val_path is not None:
            val = _checked(job, "trainer.data.val_path", lambda: load_tokens(spec, spec.val_path, cache, tokenizer))
        else:
            split = int(len(train) * (1 - spec.val_fraction))
            train, val = train[:split], train[split:]
        self.train = _checked(job, "trainer.data.path", lambda: SampleOrder(train, seq_len, seed))
        self.val = _checked(job, "trainer.data.val_path" if spec.val_path is not None else "trainer.data.val_fraction",
                            lambda: SampleOrder(val, seq_len, seed + 1))

    def _named_tokenizer(self, spec, job: str, vocab: int | None):
        """The job's tokenizer for text (None: today's byte tokens), loaded and checked against
        the model's ``vocab``."""
        if spec.tokenizer is None:
            if vocab is not None and spec.source != "bin" and vocab < 256:
                raise DataError(job, "trainer.model.vocab", f"{vocab} is smaller than the 256 ids of byte tokens "
                                                            f"(data source {spec.source!r}); expected vocab >= 256")
            return None
        try:
            tokenizer = load_tokenizer(spec.tokenizer)
        except TokenizerError as exc:
            raise DataError(job, "trainer.data.tokenizer", str(exc)) from None
        self.tokenizer = tokenizer.ref()
        if vocab is not None:
            try:
                check_vocab(self.tokenizer, vocab)
            except DatasetError as exc:
                raise DataError(job, f"trainer.{exc.key}", exc.message) from None
        return tokenizer
