"""``dataset.json``: what a prepared dataset holds, written last by a prepare run, read by
training and ``hpcorch data show``. A folder without it is not a dataset (yet)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcorch.data.format import FormatError, Shard, ShardInfo
from hpcorch.util.fileio import atomic_write

INDEX_NAME = "dataset.json"
INDEX_VERSION = 1


@dataclass(frozen=True)
class TokenizerRef:
    """The tokenizer a dataset was made with: ``sha256`` is of its vocabulary file(s), so two
    tokenizers of one name but different files are told apart."""

    name: str
    sha256: str
    vocab_size: int
    eot_id: int


@dataclass(frozen=True)
class SourceFile:
    """One input file as it was read: its fingerprint is size and SHA-256 of its bytes."""

    path: str
    size: int
    sha256: str
    documents: int = 0
    skipped: int = 0


@dataclass
class DatasetIndex:
    """The index of one prepared dataset: shards in stream order, sources in input order."""

    tokenizer: TokenizerRef
    dtype: str
    shards: list[ShardInfo]
    sources: list[SourceFile] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # how it was prepared (field, policy, ...)
    version: int = INDEX_VERSION

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.sources)

    def save(self, folder: Path) -> None:
        """Write ``folder/dataset.json`` atomically (the last step of a prepare run)."""
        atomic_write(Path(folder) / INDEX_NAME, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> DatasetIndex:
        """Read ``folder/dataset.json``; a missing or malformed one raises :class:`FormatError`
        naming the file and the key."""
        path = Path(folder) / INDEX_NAME
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FormatError(f"{path}: not found (not a prepared dataset, or its prepare has not "
                              "finished; run `hpcorch data prepare` again)") from None
        except (OSError, ValueError) as exc:
            raise FormatError(f"{path}: unreadable ({exc})") from None
        try:
            if raw.get("version") != INDEX_VERSION:
                raise FormatError(f"{path}: version: expected {INDEX_VERSION}, got {raw.get('version')!r}")
            return cls(tokenizer=TokenizerRef(**raw["tokenizer"]), dtype=raw["dtype"],
                       shards=[ShardInfo(**s) for s in raw["shards"]],
                       sources=[SourceFile(**s) for s in raw.get("sources", [])],
                       options=dict(raw.get("options", {})), version=raw["version"])
        except FormatError:
            raise
        except (KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"{path}: malformed ({type(exc).__name__}: {exc})") from None

    def open_shards(self, folder: Path) -> list[Shard]:
        """Memory-map every shard, checking that each holds what the index says (a shard
        replaced or truncated since the prepare is refused, naming the file)."""
        shards = []
        for info in self.shards:
            shard = Shard(Path(folder) / info.name)
            if (shard.num_tokens, shard.num_documents) != (info.tokens, info.documents):
                raise FormatError(f"{shard.prefix}.bin: holds {shard.num_tokens} tokens in {shard.num_documents} "
                                  f"documents, but {INDEX_NAME} says {info.tokens} in {info.documents}: "
                                  "it changed since it was prepared")
            if shard.dtype.name != self.dtype:
                raise FormatError(f"{shard.prefix}.idx: tokens are {shard.dtype.name}, {INDEX_NAME} says {self.dtype}")
            shards.append(shard)
        return shards
