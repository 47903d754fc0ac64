"""PyYAML's side of :mod:`hpcorch.spec.yamlio`: the strict loader (plain tags only, no duplicate
keys, YAML 1.1's traps for this domain removed), the shape check run before anything is built,
and the dumper that writes what the loader reads back. Imported only when YAML is really parsed
or written: a profile or job read before (same text) comes from :mod:`hpcorch.spec.usercache`,
and importing PyYAML is a tenth of a cold ``submit --dry-run``.
"""
from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import ScalarNode

from hpcorch.errors import shown

MAX_DEPTH = 64
MAX_NODES = 100_000
_TAG = "tag:yaml.org,2002:"
_INT, _FLOAT = _TAG + "int", _TAG + "float"
_PLAIN_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


class _Refused(yaml.MarkedYAMLError):
    """A document this reader will not build; carries the node's position like PyYAML's own."""

    def __init__(self, node_or_event, problem: str):
        super().__init__(problem=problem, problem_mark=node_or_event.start_mark)


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.1's implicit types without its traps for this domain: an unquoted ``2:00:00``
    stays the string Slurm means (YAML 1.1 reads the base-60 integer 7200, which would become
    7200 minutes), ``3e-4`` is a float (YAML 1.1 wants ``3.0e-4``) and ``2024-02-30`` is a
    string (no field here is a date)."""


_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$")
_FLOAT_RE = re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_Resolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT, _TAG + "timestamp")]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}
_Resolver.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
_Resolver.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))


# Which node each plain tag stands on (every other plain tag is a scalar's).
_TAG_KINDS = {_TAG + "map": yaml.MappingNode, _TAG + "seq": yaml.SequenceNode}
_KIND_NAMES = {yaml.MappingNode: "mapping", yaml.SequenceNode: "list", ScalarNode: "scalar"}


class _Constructor(yaml.constructor.SafeConstructor):
    """Builds only plain values, refuses duplicate keys, and turns PyYAML's own ``ValueError``
    (an impossible date, ``0x_``) or ``KeyError`` (``!!bool maybe``) into a marked error."""

    def construct_object(self, node, deep=False):
        if node.tag not in _PLAIN_TAGS:
            raise _Refused(node, f"unsupported tag {node.tag.replace(_TAG, '!!')}; "
                                 "expected plain strings, numbers, booleans, lists and mappings")
        kind = _TAG_KINDS.get(node.tag, ScalarNode)
        if not isinstance(node, kind):
            # `!!map [1, 2]`: PyYAML would unpack the wrong node later, outside this guard.
            raise _Refused(node, f"tag {node.tag.replace(_TAG, '!!')} expects a {_KIND_NAMES[kind]}, but the "
                                 f"value is a {_KIND_NAMES[type(node)]}; drop the tag")
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, TypeError, OverflowError, ArithmeticError) as exc:
            value = node.value if isinstance(node, ScalarNode) else node.tag
            raise _Refused(node, f"cannot read {shown(value)} as {node.tag.replace(_TAG, '')}"
                                 f" ({type(exc).__name__})") from None

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge":
                continue  # `<<: *defaults` may repeat keys on purpose: the mapping's own win
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                raise _Refused(key_node, "a key must be a plain value, not a list or mapping") from None
            if first is not key_node:
                raise _Refused(key_node, f"duplicate key {shown(key)} (first at line "
                                         f"{first.start_mark.line + 1}); YAML would keep only the last")
        return super().construct_mapping(node, deep)


if yaml.__with_libyaml__:  # libyaml's parser is about ten times faster than PyYAML's
    from yaml._yaml import CParser as _Parser

    class _Loader(_Parser, _Constructor, _Resolver):
        def __init__(self, stream):
            _Parser.__init__(self, stream)
            _Constructor.__init__(self)
            _Resolver.__init__(self)
else:  # pragma: no cover - PyYAML without libyaml
    class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,
                  yaml.composer.Composer, _Constructor, _Resolver):
        def __init__(self, stream):
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)


class _Dumper(yaml.SafeDumper):
    """Quotes exactly the strings :class:`_Loader` would read as something else."""

    yaml_implicit_resolvers = _Resolver.yaml_implicit_resolvers


def check_shape(text: str) -> None:
    """Refuse deep nesting and alias bombs from the event stream, before anything is built:
    libyaml's composer recurses in C (a few thousand ``[`` crash the process) and a built alias
    bomb is small in memory but explodes in anything that walks it."""
    sizes: dict[str, int] = {}
    stack: list[list] = [[None, 0]]  # [anchor, expanded size] of each open collection
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) > MAX_DEPTH:
                raise _Refused(event, f"nested more than {MAX_DEPTH} levels deep")
            stack.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        stack[-1][1] += size
        if stack[-1][1] > MAX_NODES:
            raise _Refused(event, f"more than {MAX_NODES:,} values once aliases are expanded")


def load(text: str) -> Any:
    """``text`` as plain data, after :func:`check_shape`; raises ``yaml.YAMLError`` (a
    :class:`_Refused` for what this loader will not build)."""
    check_shape(text)
    return yaml.load(text, Loader=_Loader)


def dump(data: Any) -> str:
    """YAML that :func:`load` reads back as ``data``."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
