"""The one YAML reader and writer for profiles, jobs, ``--set`` values and resolved job files.

Inputs come from users and from files edited by hand, so reading is bounded and strict:
UTF-8 only, at most :data:`MAX_BYTES`, :data:`~hpcorch.spec.yamlparse.MAX_DEPTH` levels of nesting and
:data:`~hpcorch.spec.yamlparse.MAX_NODES` values once aliases are expanded (an alias bomb fails in milliseconds instead
of filling memory), no duplicate keys (YAML would silently keep the last), only the plain tags
(str, int, float, bool, null, map, seq), and every failure inside PyYAML (including the
``ValueError`` of an impossible date or a 5,000-digit integer) becomes a :class:`ConfigError`
that names the source, the line and the column.

Writing uses the same scalar rules as reading, so a resolved job read back is the job that was
written: a name ``"3e-4"`` stays a string, ``2:00:00`` stays a string.
"""
from __future__ import annotations

from codecs import BOM_UTF8
from pathlib import Path
from typing import Any

from hpcorch.errors import ConfigError, shown

__all__ = ["MAX_BYTES", "dump_yaml", "parse_override", "parse_yaml", "read_yaml", "shown"]

MAX_BYTES = 1 << 20


def _check_size_and_text(text: str, source: str) -> None:
    if len(text) > MAX_BYTES:
        raise ConfigError(source, "", f"is {len(text):,} characters; expected at most {MAX_BYTES:,}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a non-UTF-8 byte in argv arrives as a lone surrogate
        raise ConfigError(source, "", f"expected text, got a lone surrogate in "
                                      f"{shown(text[max(0, exc.start - 20):exc.start + 20])}") from None


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; every failure is a ConfigError naming ``source``, line and column."""
    _check_size_and_text(text, source)
    return _parse(text, source)


def _parse(text: str, source: str) -> Any:
    import yaml

    from hpcorch.spec.yamlparse import MAX_DEPTH, load

    try:
        return load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in problem:  # libyaml >= 0.2.6 (PyYAML 6.0.4) has its own limit
            problem = f"nested more than {MAX_DEPTH} levels deep"
        raise ConfigError(source, "", f"invalid YAML: {where}{problem}") from None


def parse_override(raw: str, source: str) -> Any:
    """A ``--set`` value: numbers, booleans, null and [lists] as YAML reads them; anything else
    is the raw text, byte for byte (YAML would drop a ``# ...`` tail or a second line). A value
    YAML refuses to build (``!!int x``, a duplicate key) is an error naming ``source``."""
    text = raw.strip()
    _check_size_and_text(raw, source)
    if "\n" in raw or "\r" in raw or not text:
        return raw
    import yaml

    from hpcorch.spec.yamlparse import _Refused, load

    try:
        value = load(raw)
    except _Refused as exc:
        raise ConfigError(source, "", f"invalid value: {exc.problem}") from None
    except yaml.YAMLError:
        return raw
    if value is None:
        return None if text in ("null", "~", "Null", "NULL") else raw
    if isinstance(value, str):
        return value if text[0] in "'\"" else raw
    return value


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, which must be UTF-8 text of at most :data:`MAX_BYTES`."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(str(path), "", f"is larger than {MAX_BYTES:,} bytes; expected a "
                                         "profile or job file")
    # The BOM is stripped here rather than by the "utf-8-sig" codec, whose error offsets count
    # from after the BOM: the byte and offset named must be the file's own.
    skip = len(BOM_UTF8) if raw.startswith(BOM_UTF8) else 0
    try:
        text = raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        line = raw[:at].count(b"\n") + 1
        raise ConfigError(str(path), "", f"line {line}: byte 0x{raw[at]:02x} at offset {at} is not "
                                         "UTF-8; expected a UTF-8 text file") from None
    _check_size_and_text(text, str(path))
    # Profiles and jobs are read by every command, mostly unchanged since the last one: their
    # parsed form is kept per text (see usercache), so that a cold command need not import PyYAML.
    from hpcorch.spec.usercache import parsed

    return parsed(text, lambda: _parse(text, str(path)))


def dump_yaml(data: Any) -> str:
    """YAML that :func:`parse_yaml` reads back as ``data``."""
    from hpcorch.spec.yamlparse import dump

    return dump(data)
