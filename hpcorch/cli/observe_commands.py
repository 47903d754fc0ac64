"""``hpcorch manifest`` and ``hpcorch plot``: what ran in each attempt of a job, and its curves.

Thin click layers over :mod:`hpcorch.batch.manifest` and :mod:`hpcorch.observe.plot`; plotext and matplotlib
are imported only when a plot is drawn.
"""
from __future__ import annotations

import json
import sys

import click

from hpcorch.cli.completion import complete_refs


def _ref(func):
    return click.argument("ref", metavar="REF", shell_complete=complete_refs)(func)


@click.command()
@_ref
@click.option("--diff", "pair", nargs=2, type=click.IntRange(0), metavar="A B",
              help="What differs between attempts A and B (code, packages, versions, inputs).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def manifest(ref, pair, as_json):
    """What ran in each attempt of job REF: code, packages, versions, inputs and nodes.

    REF is a registry reference or a run directory. Each attempt's manifest holds the git
    commit and a patch of uncommitted (untracked too) changes, the installed packages, the
    Python/torch/CUDA/NCCL/Slurm versions, the hashes of script, job and profile, the nodes."""
    from hpcorch.observe import manifest as manifests

    if pair:
        result = manifests.diff(ref, *pair)
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        _echo_diff(result)
        return
    run = manifests.run_of(ref)
    found = manifests.manifests(run)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no manifest yet: one is written as each attempt starts")
        return
    for data in found:
        _echo_manifest(data)
    for line in manifests.differences(run):
        click.echo(f"warning: {line}")


def _echo_manifest(m: dict) -> None:
    git = m.get("git") or {}
    v = m.get("versions") or {}
    gpu = m.get("gpu") or {}
    if git.get("repo"):
        code = (f"{(git.get('commit') or 'no commit')[:12]} ({git.get('branch') or 'detached'})"
                + (f", dirty: {git.get('patch_bytes', 0):,} bytes of changes ({git.get('untracked', 0)} untracked files)"
                   f"{', cut' if git.get('patch_truncated') else ''}" if git.get("dirty") else ", clean")
                + (f", {git['incomplete']}" if git.get("incomplete") else ""))
    else:
        code = "not a git repository"
    click.echo(f"attempt {m.get('attempt')}: job {m.get('job_id')} ({m.get('scheduler')}, restart "
               f"{m.get('restart_count')}) on {m.get('nodes')}")
    rows = [("code", f"{m.get('code_dir')}: {code}"),
            ("versions", f"python {m.get('python')}, torch {v.get('torch')}, cuda {v.get('cuda')}, nccl {v.get('nccl')}, "
                         f"slurm {v.get('slurm')}, hpcorch {v.get('hpcorch')}"),
            ("gpu", f"{gpu.get('count')} x {gpu.get('model')}, driver {gpu.get('driver')}" if gpu else None),
            ("packages", f"{len(m.get('packages') or {})} installed"),
            ("hashes", f"script {_h(m.get('script_sha256'))}, job {_h(m.get('job_sha256'))}, "
                       f"profile {m.get('profile')} {_h(m.get('profile_sha256'))}"),
            ("topology", m.get("topology_addr"))]
    for key, value in rows:
        if value:
            click.echo(f"  {key:<9} {value}")


def _h(digest) -> str:
    return digest[:12] if digest else "-"


def _echo_diff(result: dict) -> None:
    a, b = result["a"], result["b"]
    click.echo(f"attempt {a} -> attempt {b}")
    if result["changes"]:
        click.echo("differs in what may change the result:")
        for line in result["changes"]:
            click.echo(f"  {line}")
    else:
        click.echo("same code, packages, versions and inputs")
    other = [f for f in result["fields"] if not f.startswith(("git.", "versions.", "python:"))]
    if other:
        click.echo("other fields:")
        for line in other:
            click.echo(f"  {line}")
    if result["code"]:
        click.echo("code changes between the attempts:")
        for line in result["code"]:
            click.echo(f"  {line}")


@click.command()
@_ref
@click.option("--png", "png_file", type=click.Path(dir_okay=False),
              help="Write a PNG (1200x800, needs matplotlib: pip install 'hpcorch[plot]') instead of drawing here.")
@click.option("--json", "as_json", is_flag=True, help="The curves as JSON.")
@click.option("--width", type=click.IntRange(40), default=None, help="Terminal plot width [default: the terminal's].")
@click.option("--height", type=click.IntRange(12), default=None, help="Terminal plot height [default: the terminal's].")
def plot(ref, png_file, as_json, width, height):
    """Loss, val loss, learning rate, tokens/s and goodput of job REF over steps, restarts marked.

    In the terminal (plotext), or as a PNG with --png (matplotlib); restarts are the lines
    labelled R1, R2 and so on."""
    from hpcorch.observe import plot as plots

    found = plots.plot_curves(ref)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
    elif png_file:
        click.echo(f"wrote {plots.png(found, png_file)}")
    else:
        click.echo(plots.terminal(found, width, height, color=sys.stdout.isatty()))
