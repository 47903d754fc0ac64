"""Reading prepared datasets for training: the checks a job's data must pass, and the token
stream of a split, memory-mapped across shards.

A dataset's token stream is its shards' tokens back to back, in index order (each document
already ends with the tokenizer's end-of-text id). A split is a contiguous range of that
stream: held-out validation is the *last* ``val_fraction`` of the documents (whole documents:
none is split between train and validation), so it is the same range on every rank and every
start, and training is everything before it.

Checks at open (each failure one line naming the folder or file): the index is readable, its
shards hold the token and document counts it records (a shard replaced, cut short or appended
to since the prepare is refused; the tokens themselves are not hashed at each start, which
would read the whole corpus on every rank), every dataset of a job has one tokenizer, and it
is the one the job names.
"""
from __future__ import annotations

import contextlib
import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcorch.data.format import FormatError, Shard
from hpcorch.data.index import DatasetIndex, TokenizerRef


class DatasetError(ValueError):
    """A prepared dataset a job cannot use. ``key`` is the job's key it came from (relative to
    ``trainer``: ``data.path``, ``data.mix[1].path``, ``model.vocab``); the message names the file."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(message)


def describe(ref: TokenizerRef) -> str:
    return f"{ref.name} (sha256 {ref.sha256[:12]}, {ref.vocab_size} ids)"


def wanted_tokenizer(name: str | None) -> TokenizerRef | str | None:
    """The job's tokenizer as a dataset is compared with it: its ref (name and vocabulary files'
    sha256) when it loads here, else only its name (its files may live only where the job runs;
    a name that is no tokenizer at all is then refused as a mismatch)."""
    if name is None:
        return None
    from hpcorch.data.tokenizer import TokenizerError, load_tokenizer

    try:
        return load_tokenizer(name).ref()
    except TokenizerError:
        return name


def check_tokenizer(indexes: list[tuple[str, str, DatasetIndex]], wanted: TokenizerRef | str | None) -> TokenizerRef:
    """The tokenizer of datasets ``(key, folder, index)``: all the same (name and sha256) and
    the job's ``wanted`` one (a loaded tokenizer's ref: the same vocabulary files' sha256 and
    end-of-text id, whatever path names them; or only its name); raise :class:`DatasetError`
    naming both otherwise."""
    first_key, first_folder, first = indexes[0]
    for key, folder, index in indexes[1:]:
        ref = index.tokenizer
        if (ref.name, ref.sha256) != (first.tokenizer.name, first.tokenizer.sha256):
            raise DatasetError(f"data.{key}", f"{folder} was prepared with tokenizer {describe(ref)}, but "
                                              f"{first_folder} ({first_key}) with {describe(first.tokenizer)}; "
                                              "a mixture needs one tokenizer")
    ref = first.tokenizer
    if wanted is None:
        return ref
    if isinstance(wanted, str):
        same, shown = wanted == ref.name, wanted
    else:
        same, shown = (wanted.sha256, wanted.eot_id) == (ref.sha256, ref.eot_id), describe(wanted)
    if not same:
        raise DatasetError("data.tokenizer", f"the job trains with tokenizer {shown}, but {first_folder} "
                                             f"({first_key}) was prepared with {describe(ref)}; prepare it again "
                                             "with the job's tokenizer, or name the dataset's")
    return ref


def check_vocab(ref: TokenizerRef, vocab: int) -> None:
    """The model's embedding must have a row for every id of the tokenizer."""
    if vocab < ref.vocab_size:
        raise DatasetError("model.vocab", f"{vocab} is smaller than tokenizer {ref.name}'s {ref.vocab_size} ids; "
                                          f"expected vocab >= {ref.vocab_size} (a multiple of 64 such as "
                                          f"{-(-ref.vocab_size // 64) * 64} is fastest)")


def load_index(key: str, folder: str) -> DatasetIndex:
    try:
        return DatasetIndex.load(Path(folder).expanduser())
    except FormatError as exc:
        raise DatasetError(f"data.{key}", str(exc)) from None


def check_indexes(spec, vocab: int, wanted: TokenizerRef | str | None = None) -> TokenizerRef:
    """What can be checked of a ``prepared`` data section from its indexes alone (no shard is
    opened): every index readable, one tokenizer, the job's, and ``vocab`` covering it."""
    named = [(key, folder, load_index(key, folder)) for key, folder in spec.datasets]
    if spec.val_path:
        named.append(("val_path", spec.val_path, load_index("val_path", spec.val_path)))
    ref = check_tokenizer(named, wanted if wanted is not None else wanted_tokenizer(spec.tokenizer))
    check_vocab(ref, vocab)
    return ref


class TokenRange:
    """Tokens ``[start, stop)`` of shards' streams back to back, memory-mapped: only the
    windows read are ever paged in."""

    def __init__(self, shards: list[Shard], start: int, stop: int):
        self.shards = [s.tokens for s in shards]
        self.bounds = np.concatenate([[0], np.cumsum([s.num_tokens for s in shards], dtype=np.int64)])
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def window(self, offset: int, length: int) -> np.ndarray:
        """``length`` tokens from ``offset`` (relative to the range), as int64."""
        begin = self.start + offset
        if offset < 0 or begin + length > self.stop:
            raise IndexError(f"window {offset}+{length} outside a range of {len(self)} tokens")
        i = int(np.searchsorted(self.bounds, begin, side="right")) - 1
        local = begin - int(self.bounds[i])
        if local + length <= len(self.shards[i]):  # the usual case: inside one shard
            return np.asarray(self.shards[i][local:local + length], dtype=np.int64)
        parts, need = [], length
        while need:
            piece = self.shards[i][local:local + need]
            parts.append(np.asarray(piece, dtype=np.int64))
            need -= len(piece)
            i, local = i + 1, 0
        return np.concatenate(parts)


def _random_access(shard: Shard) -> None:
    """Tell the kernel that the shard's tokens are read at random places (training windows):
    no readahead around each window read. Without it, each window's page fault also paged in
    and mapped its neighbours: in bench/bench_data.py a rank's resident file pages after 200
    steps were 259 MB on 1 GB of tokens against 88 MB on 10 MB; with it, 93 MB."""
    mapped = getattr(shard.tokens, "_mmap", None)  # numpy.memmap's mmap object
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        with contextlib.suppress(OSError, ValueError):
            mapped.madvise(mmap.MADV_RANDOM)


@dataclass
class PreparedDataset:
    """One opened dataset: its index and shards, mapped."""

    key: str       # the job key that named it ("path", "mix[1].path", "val_path")
    folder: Path
    index: DatasetIndex
    shards: list[Shard]

    @classmethod
    def open(cls, key: str, folder: str, index: DatasetIndex | None = None) -> PreparedDataset:
        folder_path = Path(folder).expanduser()
        index = index or load_index(key, folder)
        try:
            shards = index.open_shards(folder_path)
        except (FormatError, OSError) as exc:
            raise DatasetError(f"data.{key}", str(exc)) from None
        for shard in shards:
            _random_access(shard)
        if not shards or index.tokens < 2:
            raise DatasetError(f"data.{key}", f"{folder_path}: holds {index.tokens} tokens; expected a non-empty "
                                              "dataset")
        return cls(key, folder_path, index, shards)

    def whole(self) -> TokenRange:
        return TokenRange(self.shards, 0, self.index.tokens)

    def document_start(self, doc: int) -> int:
        """The position in the stream of document ``doc``'s first token."""
        for shard in self.shards:
            if doc < shard.num_documents:
                return self._before(shard) + int(shard.pointers[doc]) // shard.dtype.itemsize
            doc -= shard.num_documents
        return self.index.tokens

    def _before(self, shard: Shard) -> int:
        return sum(s.num_tokens for s in self.shards[:self.shards.index(shard)])

    def split(self, val_fraction: float) -> tuple[TokenRange, TokenRange]:
        """(train, validation): validation is the last ``val_fraction`` of the documents (at
        least one), training the documents before them (at least one)."""
        docs = self.index.documents
        held = max(1, math.ceil(docs * val_fraction))
        if docs - held < 1:
            raise DatasetError(f"data.{self.key}", f"{self.folder}: {docs} document(s) cannot give whole documents "
                                                   "to both training and validation (val_fraction); prepare more "
                                                   "documents or give val_path")
        cut = self.document_start(docs - held)
        return TokenRange(self.shards, 0, cut), TokenRange(self.shards, cut, self.index.tokens)
