"""``hpcorch plot``: a run's curves over steps (loss and validation loss, learning rate,
tokens/s, goodput) with its restarts marked, in the terminal (plotext: login nodes have no
display) or as a PNG (matplotlib, Agg). Both are imported only when drawing.

The curves come from ``metrics.jsonl`` and the ``process_start`` events. After a restart some
steps are trained again; the record that survives for a step is its last one, so the curves
are the run's final trajectory. The goodput curve is :func:`running_share`:
at each step, the productive time so far over the time allocated so far, accounted as
``hpcorch status`` accounts the whole job (Slurm's attempts where accounting has them), so its
last point and the headline's figure agree but for what came after the last step.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcorch.errors import HpcorchError
from hpcorch.observe import goodput
from hpcorch.state.rundir import RunDir
from hpcorch.util.fileio import json_lines, number

PNG_SIZE_IN = (12.0, 8.0)
PNG_DPI = 100                # 1200 x 800 pixels
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Curves:
    """A run's series over steps; ``restarts``: each later process start (the step it resumed
    from, its time and the restart count)."""

    name: str
    run_dir: str
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    goodput_steps: list[int] = field(default_factory=list)
    goodput: list[float] = field(default_factory=list)  # 0..1, so far at each step
    job_goodput: float | None = None  # the whole job's, as `hpcorch status` reports it
    restarts: list[dict] = field(default_factory=list)
    recomputed: int = 0  # step records superseded by a later run of the same step

    def as_dict(self) -> dict:
        return asdict(self)


def curves(run: RunDir, name: str | None = None, entry=None) -> Curves:
    """The curves of the run in ``run``; ``entry``: its registry entry, whose Slurm accounting
    then times the goodput (else the run directory's own records do)."""
    records = [r for r in json_lines(run.metrics) if type(r.get("step")) is int]  # not true, not 3.5
    if not records:
        raise HpcorchError(f"no metrics yet in {run.metrics}: nothing to plot")
    final = {r["step"]: r for r in records}  # a later record of a step supersedes the earlier
    kept = [final[s] for s in sorted(final)]
    starts = [e for e in json_lines(run.events) if e.get("event") == "process_start"]
    out = Curves(name or run.root.name, str(run.root), recomputed=len(records) - len(kept))
    for r in kept:
        out.steps.append(r["step"])
        out.loss.append(number(r.get("loss")))
        out.lr.append(number(r.get("lr")))
        out.tokens_per_s.append(number(r.get("tokens_per_s")))
        if number(r.get("val_loss")) is not None:
            out.val_steps.append(r["step"])
            out.val_loss.append(number(r["val_loss"]))
    out.restarts = [{"step": e["step"] if number(e.get("step")) is not None else 0, "time": number(e.get("time")),
                     "restarts": e.get("restarts", i + 1)} for i, e in enumerate(starts[1:])]
    _goodput(out, run, entry)
    return out


def _goodput(out: Curves, run: RunDir, entry) -> None:
    """The goodput curve and the job's figure (none for runs whose records carry no time)."""
    found = goodput.measure(entry if entry is not None and not entry.remote else run)
    if found is None:
        return
    figure, log = found
    out.job_goodput = figure.goodput if figure.allocated_s > 0 else None
    for step, share in running_share(figure.attempts, log):
        out.goodput_steps.append(step)
        out.goodput.append(share)


def running_share(attempts: list[goodput.Attempt], log: goodput.RunLog) -> list[tuple[int, float]]:
    """(step, goodput so far) at the end of each step that counts (a recomputed run of a step
    does not): the productive time up to then over the time allocated up to then, in the
    buckets of :func:`hpcorch.observe.goodput.account`. The curve ``hpcorch plot`` draws; the job's figure also counts
    what came after its last step (final evaluation, shutdown)."""
    points: list[tuple[int, float]] = []
    productive = 0.0
    for start, end, again, step in sorted(log.steps, key=lambda s: s[1]):
        if again:
            continue
        productive += sum(goodput.overlap(start, end, a.start, a.end) for a in attempts)
        allocated = sum(goodput.overlap(a.start, a.end, a.start, end) for a in attempts)
        if allocated > 0 and step is not None:  # a record without a step number: counted, not drawn
            points.append((step, min(1.0, productive / allocated)))
    return points


def _points(x: list, y: list) -> tuple[list, list]:
    """The points of a series that have a value."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if b is not None]
    return [a for a, _ in pairs], [b for _, b in pairs]


def headline(c: Curves) -> str:
    """One line above the plot: the run, its steps, its restarts and where it stands."""
    marks = ", ".join(f"R{i + 1} resumed at step {r['step']}" for i, r in enumerate(c.restarts))
    loss = next((v for v in reversed(c.loss) if v is not None), None)
    parts = [f"{c.name}: steps {c.steps[0]}-{c.steps[-1]}", f"loss {loss:.4f}" if loss is not None else "loss -"]
    if c.val_loss:
        parts.append(f"val loss {c.val_loss[-1]:.4f}")
    if c.job_goodput is not None:
        parts.append(f"goodput {c.job_goodput * 100:.1f}%")
    parts.append(f"{len(c.restarts)} restart{'s' if len(c.restarts) != 1 else ''}" + (f" ({marks})" if marks else ""))
    if c.recomputed:
        parts.append(f"{c.recomputed} steps recomputed")
    return "; ".join(parts)


def _panels(c: Curves) -> list[tuple[str, list[tuple[str, list, list]]]]:
    """(title, [(series name, x, y)]) for each of the four panels."""
    return [("loss", [("loss", c.steps, c.loss)] + ([("val loss", c.val_steps, c.val_loss)] if c.val_loss else [])),
            ("learning rate", [("lr", c.steps, c.lr)]),
            ("tokens/s", [("tokens/s", c.steps, c.tokens_per_s)]),
            ("goodput % so far (productive / allocated time)",
             [("goodput", c.goodput_steps, [g * 100 for g in c.goodput])])]


def _plotext(width: int | None, height: int | None, max_height: int):
    """plotext, cleared, and the figure's size: the one asked for, else the terminal's (capped)."""
    try:
        import plotext as plt
    except ImportError:
        raise HpcorchError("plotting in the terminal needs plotext: pip install plotext") from None
    size = shutil.get_terminal_size((120, 40))
    width, height = width or min(size.columns, 160), height or max(24, min(size.lines - 2, max_height))
    plt.clear_figure()
    plt.limitsize(False, False)  # the size asked for, also when stdout is a pipe (plotext measures 80x24)
    return plt, width, height


def terminal(c: Curves, width: int | None = None, height: int | None = None, color: bool = True) -> str:
    """The four panels as terminal text (plotext), under :func:`headline`; restarts are dashed
    vertical lines labelled R1, R2, ..."""
    plt, width, height = _plotext(width, height, max_height=50)
    plt.subplots(2, 2)
    plt.plotsize(width, height)
    for i, (title, series) in enumerate(_panels(c)):
        plt.subplot(i // 2 + 1, i % 2 + 1)
        plt.theme("clear")
        plt.title(title)
        drawn = [(label, *_points(x, y)) for label, x, y in series if _points(x, y)[0]]
        for label, x, y in drawn:
            plt.plot(x, y, label=label, marker="dot" if label == "val loss" else "hd")
        if not drawn:
            plt.title(f"{title}: no data")
            continue
        ys = [v for _, _, y in drawn for v in y]
        steps = [v for _, x, _ in drawn for v in x]
        plt.xticks(_step_ticks(min(steps), max(steps)))  # whole steps, not plotext's 15.8
        for k, r in enumerate(c.restarts):
            plt.vline(r["step"], "red")
            plt.text(f"R{k + 1}", r["step"], max(ys), color="red")
    text = plt.build()
    if not color:
        text = _ANSI.sub("", text)
    return headline(c) + "\n" + text


def _step_ticks(first: int, last: int, count: int = 5) -> list[int]:
    """About ``count`` whole, evenly spaced step numbers from ``first`` to ``last``."""
    span = max(1, last - first)
    return sorted({first + round(span * i / (count - 1)) for i in range(count)})


def png(c: Curves, path: str | Path) -> Path:
    """The four panels as a PNG of :data:`PNG_SIZE_IN` x :data:`PNG_DPI` pixels (matplotlib, Agg)."""
    try:
        import matplotlib
    except ImportError:
        raise HpcorchError("--png needs matplotlib: pip install 'hpcorch[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=PNG_SIZE_IN, dpi=PNG_DPI, sharex=True)
    try:
        for ax, (title, series) in zip(axes.flat, _panels(c), strict=False):  # 4 axes, up to 4 panels
            for label, x, y in series:
                x, y = _points(x, y)
                if x:
                    style = dict(marker="o", linestyle="--") if label == "val loss" else {}
                    ax.plot(x, y, label=label, linewidth=1.2, **style)
            for k, r in enumerate(c.restarts):
                ax.axvline(r["step"], color="tab:red", linestyle=":", linewidth=1)
                ax.annotate(f"R{k + 1}", (r["step"], 1.0), xycoords=("data", "axes fraction"),
                            xytext=(2, -12), textcoords="offset points", color="tab:red", fontsize=8)
            ax.set_title(title if ax.has_data() else f"{title}: no data", fontsize=10)
            ax.grid(True, alpha=0.3)
            if ax.has_data() and len(series) > 1:
                ax.legend(fontsize=8)
        axes[1][1].set_ylim(0, 100)
        axes[0][1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        for ax in axes[1]:
            ax.set_xlabel("step")
        fig.suptitle(headline(c), fontsize=9)
        fig.tight_layout()
        path = Path(path)
        try:
            fig.savefig(path, dpi=PNG_DPI)  # no bbox_inches="tight": the size stays what is asked
        except (OSError, ValueError) as exc:  # a missing folder, no permission, an unknown suffix
            raise HpcorchError(f"--png {path}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        plt.close(fig)
    return path


def plot_curves(ref: str, registry=None) -> Curves:
    """The curves of job ``ref`` (a registry reference or a run directory; a remote job: its
    pulled copy)."""
    from hpcorch.state.registry import resolve

    run, entry = resolve(ref, registry)
    name = None
    if run.job_file.exists():
        from hpcorch.spec.yamlio import read_yaml

        try:
            data = read_yaml(run.job_file)
        except HpcorchError:
            data = None
        name = data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else None
    return curves(run, name, entry)


# ----- many runs on one plot (a sweep's points) ----------------------------------------------------
@dataclass
class Overlay:
    """Several runs' curves, each labelled (a sweep's points by the parameters that differ)."""

    name: str
    runs: list[tuple[str, Curves]]

    def as_dict(self) -> dict:
        return {"name": self.name, "runs": [{"label": label, **c.as_dict()} for label, c in self.runs]}


_OVERLAY_PANELS = (("loss", "steps", "loss"), ("val loss", "val_steps", "val_loss"),
                   ("tokens/s", "steps", "tokens_per_s"))


def overlay_terminal(o: Overlay, width: int | None = None, height: int | None = None, color: bool = True) -> str:
    """Loss, validation loss and tokens/s of every run, one line per run, in the terminal."""
    plt, width, height = _plotext(width, height, max_height=60)
    plt.subplots(len(_OVERLAY_PANELS), 1)
    plt.plotsize(width, height)
    for i, (title, xs, ys) in enumerate(_OVERLAY_PANELS, 1):
        plt.subplot(i, 1)
        plt.theme("clear")
        plt.title(title)
        for label, c in o.runs:
            x, y = _points(getattr(c, xs), getattr(c, ys))
            if x:
                plt.plot(x, y, label=label, marker="hd")
    text = plt.build()
    return f"{o.name}: {len(o.runs)} runs\n" + (text if color else _ANSI.sub("", text))


def overlay_png(o: Overlay, path: str | Path) -> Path:
    """The same panels as :func:`overlay_terminal`, as a PNG (matplotlib, Agg)."""
    try:
        import matplotlib
    except ImportError:
        raise HpcorchError("--png needs matplotlib: pip install 'hpcorch[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(_OVERLAY_PANELS), 1, figsize=PNG_SIZE_IN, dpi=PNG_DPI, sharex=True)
    try:
        for ax, (title, xs, ys) in zip(axes, _OVERLAY_PANELS, strict=True):
            for label, c in o.runs:
                x, y = _points(getattr(c, xs), getattr(c, ys))
                if x:
                    ax.plot(x, y, label=label, linewidth=1.2)
            ax.set_title(title if ax.has_data() else f"{title}: no data", fontsize=10)
            ax.grid(True, alpha=0.3)
        if axes[0].has_data():
            axes[0].legend(fontsize=8)
        axes[-1].set_xlabel("step")
        fig.suptitle(f"{o.name}: {len(o.runs)} runs", fontsize=9)
        fig.tight_layout()
        try:
            fig.savefig(Path(path), dpi=PNG_DPI)
        except (OSError, ValueError) as exc:
            raise HpcorchError(f"--png {path}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        plt.close(fig)
    return Path(path)
