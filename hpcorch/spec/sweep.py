"""A sweep's points: the cross product of ``--grid`` axes, lists taken in step (``--zip``),
points read from a file (``--list``) and random samples drawn with a seed (``--sample``), all
over the dotted keys ``--set`` takes. Each point is a set of ``KEY=VALUE`` overrides; the values
are checked by loading the job with them (:func:`hpcorch.spec.job.load_job`), so a bad value is
refused, naming its point and key, before anything is submitted.

A point's name (its run directory's, its array task id) is its number and the values that vary,
``003-lr=0.001-seed=2``: readable in ``ls``, unique by the number, and a plain file name.
"""
from __future__ import annotations

import itertools
import math
import random
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hpcorch.errors import ConfigError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")
SAMPLERS = ("uniform", "loguniform", "int", "choice")
MAX_POINTS = 100_000


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its number and the values it sets (``key -> text``, as ``--set``)."""

    index: int
    params: dict[str, str]
    name: str = ""

    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.params.items()]


@dataclass
class SweepAxes:
    """What the command line asked (each entry ``KEY=V1,V2,...``; samples ``KEY=KIND:A,B``)."""

    grid: list[str] = field(default_factory=list)
    zip: list[str] = field(default_factory=list)
    list_file: str | None = None
    sample: list[str] = field(default_factory=list)
    samples: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return {"grid": self.grid, "zip": self.zip, "list_file": self.list_file, "sample": self.sample,
                "samples": self.samples, "seed": self.seed}


def parse_axis(text: str, flag: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` -> (KEY, [V1, V2]); one line naming ``flag`` when it is not that."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(flag, text, "expected KEY=V1,V2,... with a dotted key, such as trainer.seed=1,2,3")
    items = values.split(",")
    if any(not v.strip() for v in items):
        raise ConfigError(flag, key, f"an empty value in {values!r}; expected V1,V2,...")
    return key, [v.strip() for v in items]


def grid_points(axes: list[str]) -> list[dict[str, str]]:
    """The cross product of the axes, the last one varying fastest."""
    parsed = [parse_axis(a, "--grid") for a in axes]
    keys = [k for k, _ in parsed]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in parsed))]


def zip_points(axes: list[str]) -> list[dict[str, str]]:
    """The lists taken in step: every ``--zip`` axis must have as many values."""
    parsed = [parse_axis(a, "--zip") for a in axes]
    lengths = {len(v) for _, v in parsed}
    if len(lengths) > 1:
        sizes = ", ".join(f"{k} has {len(v)}" for k, v in parsed)
        raise ConfigError("--zip", parsed[0][0], f"lists taken in step must be as long: {sizes}")
    keys = [k for k, _ in parsed]
    return [dict(zip(keys, combo, strict=True)) for combo in zip(*(v for _, v in parsed), strict=True)]


def list_points(path: str) -> list[dict[str, str]]:
    """One point per line of ``path``: ``KEY=VALUE`` words (shell quoting; ``#`` starts a comment)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--list {path}", "", f"cannot read it: {exc.strerror or exc}") from None
    points = []
    for number, line in enumerate(lines, 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{path}, line {number}", "", str(exc)) from None
        if not words:
            continue
        point: dict[str, str] = {}
        for word in words:
            key, sep, value = word.partition("=")
            if not sep or not _KEY.fullmatch(key):
                raise ConfigError(f"{path}, line {number}", word, "expected KEY=VALUE words")
            point[key] = value
        points.append(point)
    if not points:
        raise ConfigError(f"--list {path}", "", "no points in it (one line of KEY=VALUE words per point)")
    return points


def sample_points(specs: list[str], count: int, seed: int) -> list[dict[str, str]]:
    """``count`` points, each drawing every ``KEY=KIND:A,B`` (uniform, loguniform, int: bounds;
    choice: the values) from one generator seeded with ``seed``: the same seed, the same points."""
    if count < 1:
        raise ConfigError("--samples", str(count), "expected at least 1 point to draw")
    draws = []
    for text in specs:
        key, values = parse_axis(text, "--sample")
        kind, sep, first = values[0].partition(":")
        if not sep or kind not in SAMPLERS:
            raise ConfigError("--sample", key, f"expected KIND:A,B with KIND one of {', '.join(SAMPLERS)}")
        args = [first, *values[1:]]
        if kind != "choice":
            args = _bounds(key, kind, args)
        draws.append((key, kind, args))
    rng = random.Random(seed)
    points = []
    for _ in range(count):
        point = {}
        for key, kind, args in draws:
            if kind == "choice":
                point[key] = rng.choice(args)
            elif kind == "int":
                point[key] = str(rng.randint(int(args[0]), int(args[1])))
            elif kind == "uniform":
                point[key] = f"{rng.uniform(args[0], args[1]):.6g}"
            else:
                point[key] = f"{math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))):.6g}"
        points.append(point)
    return points


def _bounds(key: str, kind: str, args: list[str]) -> list[float]:
    try:
        low, high = (float(a) for a in args)
    except ValueError:
        raise ConfigError("--sample", key, f"{kind} takes two numbers LOW,HIGH, got {','.join(args)!r}") from None
    if not low < high or (kind == "loguniform" and low <= 0) or (kind == "int" and not (low.is_integer()
                                                                                       and high.is_integer())):
        raise ConfigError("--sample", key, f"{kind}:{low:g},{high:g}: expected LOW < HIGH"
                          + (", both above 0" if kind == "loguniform" else "")
                          + (", whole numbers" if kind == "int" else ""))
    return [low, high]


def expand(axes: SweepAxes) -> list[Point]:
    """Every point: list × zip × grid × samples (each source that is given), numbered from 0. A
    key set by two sources is refused (which would win is not obvious)."""
    sources = []
    if axes.list_file:
        sources.append(list_points(axes.list_file))
    if axes.zip:
        sources.append(zip_points(axes.zip))
    if axes.grid:
        sources.append(grid_points(axes.grid))
    if axes.sample:
        sources.append(sample_points(axes.sample, axes.samples or 1, axes.seed))
    if not sources:
        raise ConfigError("hpcorch sweep", "", "no points: give --grid, --zip, --list or --sample")
    owners: dict[str, int] = {}
    for number, source in enumerate(sources):
        for key in {k for point in source for k in point}:
            if owners.setdefault(key, number) != number:
                raise ConfigError("hpcorch sweep", key, "set by two of --grid/--zip/--list/--sample; give it once")
    total = math.prod(len(s) for s in sources)
    if total > MAX_POINTS:
        raise ConfigError("hpcorch sweep", "", f"{total} points; at most {MAX_POINTS}")
    merged = [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*sources)]
    return name_points(merged)


def name_points(params: list[dict[str, str]]) -> list[Point]:
    """Number the points and name each by the values that differ between points."""
    varying = [k for k in dict.fromkeys(k for p in params for k in p) if len({p.get(k) for p in params}) > 1]
    width = max(3, len(str(len(params) - 1)))
    points = []
    for index, point in enumerate(params):
        words = [f"{key.rsplit('.', 1)[-1]}={point[key]}" for key in varying if key in point]
        name = _UNSAFE.sub("_", "-".join([f"{index:0{width}d}", *words]))[:100].rstrip("-_.")
        points.append(Point(index, dict(point), name))
    return points


def varying_keys(points: list[Point]) -> list[str]:
    """The keys whose values differ between points (what labels a plot or a table)."""
    keys = dict.fromkeys(k for p in points for k in p.params)
    return [k for k in keys if len({p.params.get(k) for p in points}) > 1] or list(keys)


def check_point(point: Point, error: ConfigError) -> ConfigError:
    """``error`` (from loading the job with ``point``'s overrides) as one line naming the point."""
    return ConfigError(f"sweep point {point.index} ({point.name})", error.key,
                       str(error).removeprefix(f"{error.source}: ").removeprefix(f"{error.key}: "))
