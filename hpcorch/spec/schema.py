"""Build typed dataclasses from parsed YAML, strictly.

One small loader serves profiles and jobs: it rejects unknown keys (a typo must never be
ignored), checks every value's type against the dataclass annotations, and reports errors with
the file and the dotted key path. Field-level rules live in each dataclass's ``__post_init__``,
which raises :class:`Invalid`; the loader adds the path.
"""
from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError

T = TypeVar("T")


class Invalid(ValueError):
    """Raised by a dataclass's ``__post_init__``: ``field`` is relative to that dataclass."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


# Names that end up in #SBATCH lines, file names or shell words: no spaces, quotes or newlines.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(field: str, value: str | None, what: str = "a name") -> None:
    """Names reach #SBATCH lines, where no quoting exists, so only a safe alphabet passes."""
    if value is not None and not NAME_RE.match(value):
        raise Invalid(field, f"expected {what} of letters, digits, '_', '.', '+' or '-' "
                             f"(starting with a letter or digit), got {value!r}")


def check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            raise Invalid(name, f"expected a {'non-negative' if allow_zero else 'positive'} "
                                f"number, got {value!r}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def build(cls: type[T], data: Any, source: str, path: str = "") -> T:
    """Return ``cls`` built from ``data``; raise :class:`ConfigError` naming source and path."""
    return _convert(cls, data, source, path)


def _convert(tp: Any, value: Any, source: str, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None
        errors = []
        for arg in args:
            try:
                return _convert(arg, value, source, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(source, path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(source, path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(source, path, f"expected {_type_name(tp)}, got {value!r}")
        items = [_convert(get_args(tp)[0], v, source, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, path, f"expected {_type_name(tp)}, got {value!r}")
        key_t, val_t = get_args(tp)
        return {_convert(key_t, k, source, _join(path, k)): _convert(val_t, v, source, _join(path, k))
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, source, path)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, path, f"expected a number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        # bool is a subclass of int; "yes" must not become an int, nor 1 a string.
        if type(value) is not tp:
            raise ConfigError(source, path, f"expected {_type_name(tp)}, got {value!r}")
        if tp is str and ("\n" in value or "\r" in value or "\0" in value):
            raise ConfigError(source, path, "expected a single line, got a newline or NUL")
        return value
    if tp is Any:
        return value
    raise TypeError(f"schema: unsupported annotation {tp!r}")


def _build_dataclass(cls: type, value: Any, source: str, path: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(source, path, f"expected a mapping, got {value!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise ConfigError(source, _join(path, unknown[0]),
                          f"unknown key; expected one of: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], source, _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(source, _join(path, name), f"missing; expected {_type_name(hints[name])}")
    try:
        return cls(**kwargs)
    except Invalid as exc:
        raise ConfigError(source, _join(path, exc.field), exc.message) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's traps for this domain.

    An unquoted ``2:00:00`` stays the string Slurm means (YAML 1.1 reads it as the base-60
    integer 7200, which would become 7200 minutes), and ``3e-4`` is a float (YAML 1.1 wants
    ``3.0e-4``).
    """


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; syntax errors become a ConfigError with line and column."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), "", f"invalid YAML: {where}{problem}") from None


def parse_override(raw: str) -> Any:
    """A ``--set`` value: numbers, booleans, null and [lists] as YAML reads them; anything else
    is the raw text, byte for byte (YAML would drop a ``# ...`` tail or a second line)."""
    text = raw.strip()
    if "\n" in raw or "\r" in raw or not text:
        return raw
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError:
        return raw
    if value is None:
        return None if text in ("null", "~", "Null", "NULL") else raw
    if isinstance(value, str):
        return value if text[0] in "'\"" else raw
    return value


def set_dotted(data: dict, dotted: str, raw: str, source: str) -> None:
    """Apply ``--set a.b.c=VALUE`` to parsed YAML; VALUE is parsed as a YAML scalar."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(source, dotted, "expected a dotted key path such as trainer.steps")
    value = parse_override(raw)
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(source, ".".join(keys[: i + 1]), "is not a mapping; cannot set a key under it")
        node = child
    node[keys[-1]] = value


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config dataclass (for YAML dumps and fingerprints)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
