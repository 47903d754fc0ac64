"""Build typed dataclasses from parsed YAML, strictly.

One small loader serves profiles and jobs: it rejects unknown keys (a typo must never be
ignored), checks every value's type against the dataclass annotations, and reports errors with
the file and the dotted key path. Field-level rules live in each dataclass's ``__post_init__``,
which raises :class:`Invalid`; the loader adds the path.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from hpcorch.errors import ConfigError
from hpcorch.spec.yamlio import parse_override, shown

T = TypeVar("T")

# Integers beyond 64 bits are never meant here (seeds go up to 2**64 - 1), and huge ones make
# arithmetic and error messages slow.
MAX_INT = 2**64 - 1
# Field metadata key: this field is a choice tagged on ``kind`` whose default's kind stands for
# an absent ``kind`` (see _with_default_kind).
KIND_DEFAULT = "hpcorch.kind_default"
# Field metadata key: the dataclass's __post_init__ checks this field's value whatever its type
# and says what it expects (a union's "expected an integer or a string or ..." would not).
CHECKED_AFTER = "hpcorch.checked_after"


class Invalid(ValueError):
    """Raised by a dataclass's ``__post_init__``: ``field`` is relative to that dataclass."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


# Names that end up in #SBATCH lines, file names or shell words: no spaces, quotes or newlines.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
# Sites name accounts per machine part with '@' (IDRIS Jean Zay: abc@v100, abc@a100).
ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@-]{0,127}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_account(field: str, value: str | None) -> None:
    """A Slurm account name: a name's alphabet plus '@' (it reaches #SBATCH lines unquoted)."""
    if value is not None and not ACCOUNT_RE.fullmatch(value):
        raise Invalid(field, "expected an account name of letters, digits, '_', '.', '+', '@' or '-' "
                             f"(starting with a letter or digit), got {shown(value)}")


def check_name(field: str, value: str | None, what: str = "a name") -> None:
    """Names reach #SBATCH lines, where no quoting exists, so only a safe alphabet passes."""
    if value is not None and not NAME_RE.fullmatch(value):
        raise Invalid(field, f"expected {what} of letters, digits, '_', '.', '+' or '-' "
                             f"(starting with a letter or digit), got {shown(value)}")


# Bash refuses to assign these (read-only or special), or assigning them breaks the job script,
# Slurm's bookkeeping or the launcher that hpcorch and submitit set up on every rank.
RESERVED_ENV = frozenset(["BASHOPTS", "BASH_ARGC", "BASH_ARGV", "BASH_COMMAND", "BASH_ENV", "BASH_LINENO",
                          "BASH_SOURCE", "BASH_SUBSHELL", "BASH_VERSINFO", "BASH_VERSION", "BASHPID", "DIRSTACK", "ENV",
                          "EUID", "FUNCNAME", "GROUPS", "HISTCMD", "HOME", "HOSTNAME", "IFS", "LINENO", "OLDPWD",
                          "OPTARG", "OPTIND", "PATH", "PPID", "PS4", "PWD", "RANDOM", "SECONDS", "SHELL", "SHELLOPTS",
                          "SHLVL", "UID", "USER", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME",
                          "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                          "GROUP_RANK", "HPCORCH_RUN_DIR", "HPCORCH_LEASE"])
# (Other HPCORCH_ names stay free: the fault-injection hooks of hpcorch.train.faults are set so.)
RESERVED_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SUBMITIT_", "BASH_FUNC_")


def check_env_names(variables: dict) -> None:
    """Names a job script may export: identifiers, and none that the shell, Slurm or the
    launcher own (``PATH`` replaced wholesale would hide the job's Python)."""
    for name in variables:
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            raise Invalid(name, "expected an environment variable name (letters, digits, '_')")
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
            raise Invalid(name, "is set by the shell, Slurm or hpcorch itself; choose another "
                                "name (for PATH and LD_LIBRARY_PATH, use the profile's environment.prepend)")


# Slurm keeps most counts in 16 bits with the top two values as sentinels (NO_VAL16,
# INFINITE16), node counts and limits in 32 bits likewise: the largest real values.
SLURM_MAX16 = 2**16 - 3
SLURM_MAX32 = 2**32 - 3


def check_at_most(obj: Any, limit: int, why: str, *names: str) -> None:
    """Each of ``names`` (None skipped) is at most ``limit``; ``why`` says whose limit it is.
    Every count that reaches slurm.conf or #SBATCH, or becomes a list, has one."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not isinstance(value, bool) and value > limit:
            raise Invalid(name, f"expected at most {limit} ({why}), got {shown(value)}")


def check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            raise Invalid(name, f"expected a {'non-negative' if allow_zero else 'positive'} "
                                f"number, got {shown(value)}")


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
    """``value`` checked against the annotation ``tp`` (and built, for dataclasses), by the
    annotation's kind; raises :class:`ConfigError` naming ``source`` and ``path``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, source, path)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(source, path, f"expected {_type_name(tp)}, got {shown(value)}")
        return value
    if origin in (list, tuple):
        return _convert_sequence(tp, value, source, path)
    if origin is dict:
        return _convert_mapping(tp, value, source, path)
    if dataclasses.is_dataclass(tp):
        variants = _tagged_variants([tp])
        if variants and isinstance(value, dict) and "kind" in value:  # a choice of one: kind first
            _tagged_choice(variants, value, source, path)
        return _build_dataclass(tp, value, source, path)
    if tp is float:
        return _convert_float(value, source, path)
    if tp is int or tp is bool or tp is str:
        return _convert_exact(tp, value, source, path)
    if tp is Any:
        return value
    raise TypeError(f"schema: unsupported annotation {tp!r}")


def _convert_union(tp: Any, value: Any, source: str, path: str) -> Any:
    """``None`` for an optional; the variant ``kind`` names for a tagged union; else the first
    variant that accepts ``value`` (a lone variant's own error, when only one was tried)."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if value is None and len(args) < len(get_args(tp)):
        return None
    variants = _tagged_variants(args)
    if variants and isinstance(value, dict):
        return _convert(_tagged_choice(variants, value, source, path), value, source, path)
    errors = []
    for arg in args:
        try:
            return _convert(arg, value, source, path)
        except ConfigError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(source, path, f"expected {_type_name(tp)}, got {shown(value)}")


def _convert_sequence(tp: Any, value: Any, source: str, path: str) -> list | tuple:
    """A YAML list, item by item (a tuple where the annotation says so)."""
    if not isinstance(value, list):
        raise ConfigError(source, path, f"expected {_type_name(tp)}, got {shown(value)}")
    items = [_convert(get_args(tp)[0], v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if get_origin(tp) is tuple else items


def _convert_mapping(tp: Any, value: Any, source: str, path: str) -> dict:
    """A YAML mapping, keys and values each checked, errors at the key's path."""
    if not isinstance(value, dict):
        raise ConfigError(source, path, f"expected {_type_name(tp)}, got {shown(value)}")
    key_t, val_t = get_args(tp)
    return {_convert(key_t, k, source, _join(path, k)): _convert(val_t, v, source, _join(path, k))
            for k, v in value.items()}


def _convert_float(value: Any, source: str, path: str) -> float:
    """A number (an integer too, but not a bool), finite and of at most 64-bit magnitude."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(source, path, f"expected a number, got {shown(value)}")
    if isinstance(value, int) and abs(value) > MAX_INT or not math.isfinite(value):
        raise ConfigError(source, path, f"expected a finite number, got {shown(value)}")
    return float(value)


def _convert_exact(tp: type, value: Any, source: str, path: str) -> Any:
    """An int, bool or str of exactly that type: bool is a subclass of int, and "yes" must not
    become an int, nor 1 a string. Integers stay within 64 bits; strings are single lines."""
    if type(value) is not tp:
        raise ConfigError(source, path, f"expected {_type_name(tp)}, got {shown(value)}")
    if tp is int and not -MAX_INT <= value <= MAX_INT:
        raise ConfigError(source, path, f"expected an integer of at most 64 bits, got {shown(value)}")
    if tp is str:
        _check_text(value, source, path)
    return value


def _tagged_variants(args) -> dict | None:
    """A union of dataclasses that all default a Literal ``kind`` is tagged on it: ``kind``
    picks the variant, so an error names that variant's keys (not "expected a or b or c")."""
    variants = {}
    for arg in args:
        kind = {f.name: f for f in dataclasses.fields(arg)}.get("kind") if dataclasses.is_dataclass(arg) else None
        if kind is None or get_origin(type_hints(arg)["kind"]) is not Literal:
            return None
        variants[kind.default] = arg
    return variants


def _tagged_choice(variants: dict, value: dict, source: str, path: str) -> type:
    kind = value.get("kind")
    if not isinstance(kind, str) or kind not in variants:  # a list or mapping is no kind (nor hashable)
        got = "nothing" if "kind" not in value else shown(kind)
        raise ConfigError(source, _join(path, "kind"), f"expected one of {', '.join(map(repr, variants))}, got {got}")
    return variants[kind]


def _with_default_kind(f: dataclasses.Field, value: Any) -> Any:
    """A tagged choice whose field is marked :data:`KIND_DEFAULT` takes its default's ``kind``
    when the file names none (``trainer.model`` without ``kind`` is the GPT it always was)."""
    if f.metadata.get(KIND_DEFAULT) and isinstance(value, dict) and "kind" not in value:
        return {"kind": f.default_factory().kind, **value}
    return value


def _check_text(value: str, source: str, path: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ConfigError(source, path, "expected a single line, got a newline or NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(source, path, f"expected text, got a lone surrogate in {shown(value)}") from None


def _unknown_key(key: Any, known) -> str:
    import difflib  # only for a misspelt key

    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}expected one of: {', '.join(sorted(known))}"


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, once per class, and each annotation text evaluated once
    per module: ``get_type_hints`` compiles every string annotation of every class anew, which
    was a tenth of a cold ``submit --dry-run``. An annotation this shortcut cannot evaluate in its
    module's namespace falls back to ``get_type_hints`` for the whole class."""
    hints: dict[str, Any] = {}
    try:
        for base in reversed(cls.__mro__):
            for name, value in base.__dict__.get("__annotations__", {}).items():
                value = _annotation(base.__module__, value) if isinstance(value, str) else value
                hints[name] = type(None) if value is None else value
    except Exception:  # a name only the class's own namespace holds, say
        return get_type_hints(cls)
    return hints


@functools.cache
def _annotation(module: str, text: str) -> Any:
    return eval(text, vars(sys.modules[module]))  # noqa: S307 - the module's own annotation source


def _build_dataclass(cls: type, value: Any, source: str, path: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(source, path, f"expected a mapping, got {shown(value)}")
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise ConfigError(source, _join(path, str(unknown[0])), _unknown_key(unknown[0], fields))
    kwargs = {}
    for name, f in fields.items():
        if name in value and f.metadata.get(CHECKED_AFTER):
            kwargs[name] = value[name]
        elif name in value:
            kwargs[name] = _convert(hints[name], _with_default_kind(f, value[name]), source, _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(source, _join(path, name), f"missing; expected {_type_name(hints[name])}")
    try:
        return cls(**kwargs)
    except Invalid as exc:
        raise ConfigError(source, _join(path, exc.field), exc.message) from None


def set_dotted(data: dict, dotted: str, raw: str, source: str) -> None:
    """Apply ``--set a.b.c=VALUE`` to parsed YAML; VALUE is parsed as a YAML scalar."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(source, dotted, "expected a dotted key path such as trainer.steps")
    value = parse_override(raw, source)
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
