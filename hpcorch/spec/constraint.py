"""Slurm's ``--constraint`` language: parsed once, then asked which node types satisfy it.

The syntax is the one sbatch documents: feature names joined by ``&`` or ``,`` (AND) and ``|``
(OR), ``name*N`` (N of the job's nodes must have the feature), ``( )`` to group, and ``[ ]``
for "matching OR" (every node from one alternative: ``[rack1|rack2]``) or multiple counts
(``[a*2&b*4]``). Slurm evaluates ``&`` and ``|`` from left to right with no precedence between
them, and so does :func:`matches`. Negation is not in sbatch's documented syntax, so ``!`` is
refused here rather than guessed at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Feature names as Slurm's config parser accepts them (":" appears in some sites' KNL modes).
_TOKEN = re.compile(r"(?:(?P<name>[A-Za-z0-9_.:\-]+)|(?P<op>[&,|])|(?P<open>[\[(])|(?P<close>[\])])"
                    r"|(?P<star>\*(?P<count>\d{1,9})))")


@dataclass(frozen=True)
class Feature:
    """A node feature named in a constraint, with ``*N`` as its count."""

    name: str
    count: int | None = None


@dataclass(frozen=True)
class Expr:
    """``terms[0] ops[0] terms[1] ...``; ``bracket`` for ``[ ]``, ``count`` for ``( )*N``."""

    terms: tuple  # of Feature | Expr
    ops: tuple[str, ...]  # "&" or "|" ("," is read as "&")
    bracket: bool = False
    count: int | None = None


def parse(text: str) -> Expr:
    """The constraint as a tree; ValueError with a short reason when it is not Slurm syntax."""
    tokens = _tokenize(text)
    expr, pos = _expr(tokens, 0, depth=0, in_bracket=False)
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos][1]!r}")
    return expr


def _tokenize(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = text[pos]
            raise ValueError("'!' (negation) is not Slurm constraint syntax" if bad == "!"
                             else f"unexpected character {bad!r}")
        kind = next(k for k in ("name", "op", "open", "close", "star") if m[k] is not None)
        out.append((kind, m["count"] if kind == "star" else m[kind]))
        pos = m.end()
    if not out:
        raise ValueError("empty")
    return out


def _expr(tokens, pos: int, depth: int, in_bracket: bool) -> tuple[Expr, int]:
    terms, ops = [], []
    while True:
        term, pos = _term(tokens, pos, depth, in_bracket)
        terms.append(term)
        if pos < len(tokens) and tokens[pos][0] == "op":
            ops.append("|" if tokens[pos][1] == "|" else "&")
            pos += 1
            continue
        return Expr(tuple(terms), tuple(ops)), pos


def _term(tokens, pos: int, depth: int, in_bracket: bool):
    if pos >= len(tokens):
        raise ValueError("ends after an operator")
    kind, value = tokens[pos]
    if kind == "name":
        pos += 1
        count, pos = _count(tokens, pos)
        return Feature(value, count), pos
    if kind == "open":
        if depth > 32:
            raise ValueError("nested too deeply")
        bracket = value == "["
        if bracket and in_bracket:
            raise ValueError("brackets cannot nest")
        inner, pos = _expr(tokens, pos + 1, depth + 1, in_bracket or bracket)
        if pos >= len(tokens) or tokens[pos][1] != ("]" if bracket else ")"):
            raise ValueError(f"unclosed {value!r}")
        count, pos = (None, pos + 1) if bracket else _count(tokens, pos + 1)
        return Expr(inner.terms, inner.ops, bracket=bracket, count=count), pos
    raise ValueError(f"expected a feature name, got {value!r}")


def _count(tokens, pos: int) -> tuple[int | None, int]:
    if pos < len(tokens) and tokens[pos][0] == "star":
        count = int(tokens[pos][1])
        if count < 1:
            raise ValueError("a node count after '*' must be at least 1")
        return count, pos + 1
    return None, pos


def features(expr: Expr) -> list[str]:
    """Every feature name, in order, once each."""
    out: dict[str, None] = {}
    for term in expr.terms:
        if isinstance(term, Feature):
            out.setdefault(term.name)
        else:
            out.update(dict.fromkeys(features(term)))
    return list(out)


def matches(expr: Expr | Feature, have: set[str] | frozenset[str]) -> bool:
    """Whether a node with features ``have`` may be one of the job's nodes. A counted term
    (``a*2``) restricts how many nodes have ``a``, not which nodes the job may use, so it
    holds for every node here; :func:`counted` lists what it asks for."""
    if isinstance(expr, Feature):
        return expr.count is not None or expr.name in have
    if expr.count is not None:
        return True
    result = matches(expr.terms[0], have)
    for op, term in zip(expr.ops, expr.terms[1:], strict=True):
        result = (result or matches(term, have)) if op == "|" else (result and matches(term, have))
    return result


def counted(expr: Expr) -> list[tuple[Feature | Expr, int]]:
    """The counted terms: (the term without its count, N) for each ``term*N``."""
    out = []
    for term in expr.terms:
        if term.count is not None:
            bare = Feature(term.name) if isinstance(term, Feature) else Expr(term.terms, term.ops, term.bracket)
            out.append((bare, term.count))
        elif isinstance(term, Expr):
            out += counted(term)
    return out


def alternatives(expr: Expr) -> list[Expr]:
    """For a "matching OR" (``[a|b]``, where all nodes must share one alternative): one
    expression per alternative, that bracket replaced by it. Without one: ``[expr]``."""
    for i, term in enumerate(expr.terms):
        if isinstance(term, Expr):
            if term.bracket and term.ops and all(op == "|" for op in term.ops):
                return [_replace(expr, i, alt) for alt in term.terms]
            inner = alternatives(term)
            if len(inner) > 1:
                return [_replace(expr, i, alt) for alt in inner]
    return [expr]


def _replace(expr: Expr, i: int, term) -> Expr:
    return Expr(expr.terms[:i] + (term,) + expr.terms[i + 1:], expr.ops, expr.bracket, expr.count)


def show(term: Feature | Expr, top: bool = True) -> str:
    """The term written back in Slurm syntax (for messages)."""
    if isinstance(term, Feature):
        return term.name + (f"*{term.count}" if term.count else "")
    inner = show(term.terms[0], top=False)
    for op, t in zip(term.ops, term.terms[1:], strict=True):
        inner += op + show(t, top=False)
    if term.bracket:
        return f"[{inner}]"
    if term.count or (len(term.terms) > 1 and not top):
        return f"({inner})" + (f"*{term.count}" if term.count else "")
    return inner
