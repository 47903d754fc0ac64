"""The ``trainer.data`` section: where a job's tokens come from (bytes of text, a token file,
or datasets prepared by ``hpcorch data prepare``, alone or mixed with weights)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hpcorch.spec.schema import Invalid, check_positive

# A mixture's smallest normalised weight: below it a block of positions would need more than a
# million entries for each dataset to get its share (hpcorch.data.sampling.Mixture).
MIN_MIX_WEIGHT = 1e-4


@dataclass
class DataMix:
    """One dataset of a ``prepared`` mixture: a folder ``hpcorch data prepare`` wrote, and its
    weight (any positive number; the weights are normalised to sum to 1)."""

    path: str
    weight: float = 1.0

    def __post_init__(self):
        if not self.path:
            raise Invalid("path", "expected a prepared dataset folder, got an empty string")
        if not self.weight > 0:
            raise Invalid("weight", f"expected a positive weight, got {self.weight}")


@dataclass
class DataSpec:
    """``stdlib``: the running Python's standard library sources as bytes (no download).
    ``text``: text files under ``path``. ``bin``: a token file at ``path`` (uint16; int32 or
    uint32 when ``tokens`` says so). ``prepared``: datasets written by ``hpcorch data prepare``
    (``path`` for one, ``mix`` for several with weights), memory-mapped.
    ``val_path``: the validation data in its own file(s) or prepared dataset, as nanoGPT's
    ``train.bin`` + ``val.bin``; then ``path`` is all training data and ``val_fraction`` unused.
    Without it, ``val_fraction`` of the tokens (of the documents, for ``prepared``) is held out.
    ``tokenizer``: the tokenizer the job trains with (a name or a ``tokenizer.json``); a prepared
    dataset made with another is refused; omitted, a prepared dataset's own is used."""

    source: Literal["stdlib", "text", "bin", "prepared"] = "stdlib"
    path: str | None = None
    # None, not [], and None for the defaults below: keys a checkpoint of an older hpcorch does
    # not record must read as unchanged (hpcorch.spec.compat compares them, absent = None).
    mix: list[DataMix] | None = None
    val_path: str | None = None
    val_fraction: float = 0.05
    max_bytes: int = 8_000_000  # cap on text read, so a tiny job starts in a second
    tokens: Literal["uint16", "int32", "uint32"] | None = None  # width of a ``bin`` file's tokens (None: uint16)
    tokenizer: str | None = None

    def __post_init__(self):
        if self.mix and self.source != "prepared":
            raise Invalid("mix", f"expected no mix for data source {self.source!r}; a mixture is of prepared datasets "
                                 "(source: prepared)")
        if self.source == "prepared":
            self._check_prepared()
        elif self.source != "stdlib" and not self.path:
            raise Invalid("path", f"expected a path for data source {self.source!r}")
        if self.val_path is not None and self.source == "stdlib":
            raise Invalid("val_path", "expected no val_path for data source 'stdlib' (it splits by "
                          "val_fraction); use source bin or text")
        if self.val_path is not None and not self.val_path:
            raise Invalid("val_path", "expected a path, got an empty string")
        if not 0 < self.val_fraction < 0.5:
            raise Invalid("val_fraction", f"expected 0 < val_fraction < 0.5, got {self.val_fraction}")
        if self.tokens not in (None, "uint16") and self.source != "bin":
            raise Invalid("tokens", f"expected uint16 (the default) for data source {self.source!r}; the width of "
                                    "a prepared dataset's tokens is in its index, text is tokenized here")
        if self.tokenizer is not None and not self.tokenizer.strip():
            raise Invalid("tokenizer", "expected a tokenizer name (gpt2, bytes) or a tokenizer.json path, "
                                       "got an empty string")
        if self.tokenizer is not None and self.source == "bin":
            raise Invalid("tokenizer", "expected no tokenizer for data source 'bin' (a bare token file records none); "
                                       "prepare the corpus (hpcorch data prepare) and use source prepared")
        check_positive(self, "max_bytes")

    def _check_prepared(self) -> None:
        if bool(self.path) == bool(self.mix):
            raise Invalid("path", "expected either path (one prepared dataset) or mix (several, with weights) "
                                  "for data source 'prepared'")
        paths = [m.path for m in self.mix or []]
        for i, p in enumerate(paths):
            if p in paths[:i]:
                raise Invalid(f"mix[{i}].path", f"{p!r} is already mix[{paths.index(p)}]; give each dataset once "
                                                "(add the weights)")
        weights = self.weights
        for i, w in enumerate(weights):
            if w < MIN_MIX_WEIGHT:
                raise Invalid(f"mix[{i}].weight", f"normalised to {w:.2g}, below the smallest share "
                                                  f"{MIN_MIX_WEIGHT:g}; raise it or drop the dataset")

    @property
    def datasets(self) -> list[tuple[str, str]]:
        """``(key, folder)`` of each prepared training dataset, in mixture order."""
        if self.mix:
            return [(f"mix[{i}].path", m.path) for i, m in enumerate(self.mix)]
        return [("path", self.path)] if self.path else []

    @property
    def weights(self) -> list[float]:
        """The mixture's weights normalised to sum to 1 (``[1.0]`` for one dataset)."""
        if not self.mix:
            return [1.0]
        total = sum(m.weight for m in self.mix)
        return [m.weight / total for m in self.mix]
