"""``hpcorch manifest`` and ``hpcorch plot``: what ran in each attempt of a job, and its curves,
over :mod:`hpcorch.service.manifests`; plotext and matplotlib are imported only when a plot is drawn.
"""
from __future__ import annotations

import json
import sys

import click

from hpcorch.cli.options import json_option, ref_argument


@click.command()
@ref_argument()
@click.option("--diff", "pair", nargs=2, type=click.IntRange(0), metavar="A B",
              help="What differs between attempts A and B (code, packages, versions, inputs).")
@json_option()
def manifest(ref, pair, as_json):
    """What ran in each attempt of job REF: code, packages, versions, inputs and nodes.

    REF is a registry reference or a run directory. Each attempt's manifest holds the git
    commit and a patch of uncommitted (untracked too) changes, the installed packages, the
    Python/torch/CUDA/NCCL/Slurm versions, the hashes of script, job and profile, the nodes."""
    from hpcorch.cli.views import attempts_lines, diff_lines, text
    from hpcorch.service import manifests

    if pair:
        click.echo(text(manifests.diff(ref, *pair), as_json, diff_lines))
        return
    found = manifests.attempts(ref)
    click.echo(json.dumps(found["manifests"], indent=2) if as_json else "\n".join(attempts_lines(found)))


@click.command()
@ref_argument()
@click.option("--png", "png_file", type=click.Path(dir_okay=False),
              help="Write a PNG (1200x800, needs matplotlib: pip install 'hpcorch[plot]') instead of drawing here.")
@json_option("The curves as JSON.")
@click.option("--width", type=click.IntRange(40), default=None, help="Terminal plot width [default: the terminal's].")
@click.option("--height", type=click.IntRange(12), default=None, help="Terminal plot height [default: the terminal's].")
def plot(ref, png_file, as_json, width, height):
    """Loss, val loss, learning rate, tokens/s and goodput of job REF over steps, restarts marked.

    REF a sweep (its name or folder): every point's loss, val loss and tokens/s on one plot,
    labelled by the parameters that differ.

    In the terminal (plotext), or as a PNG with --png (matplotlib); restarts are the lines
    labelled R1, R2 and so on."""
    from hpcorch.service import manifests
    from hpcorch.service import sweepops as sweep

    if sweep.is_sweep(ref):  # a sweep: its points' curves on one plot, labelled by what differs
        found, png, terminal = sweep.sweep_curves(ref), manifests.overlay_png, manifests.overlay_terminal
    else:
        found, png, terminal = manifests.curves(ref), manifests.png, manifests.terminal
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
    elif png_file:
        click.echo(f"wrote {png(found, png_file)}")
    else:
        click.echo(terminal(found, width, height, color=sys.stdout.isatty()))
