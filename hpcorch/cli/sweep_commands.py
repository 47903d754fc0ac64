"""``hpcorch sweep``: many runs of one job as Slurm job arrays (a thin layer over
:mod:`hpcorch.service.sweep`). ``hpcorch sweep JOB ...`` submits; ``status``, ``cancel`` and
``resume`` operate a submitted sweep by name."""
from __future__ import annotations

import json
import time

import click

from hpcorch.cli.options import force_option, job_argument, json_option, profile_option, template_option
from hpcorch.errors import HpcorchError


class SweepGroup(click.Group):
    """``hpcorch sweep JOB ...`` is the submit command; ``hpcorch sweep status NAME`` etc. operate."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["submit", *args]
        return super().parse_args(ctx, args)


@click.group(cls=SweepGroup)
def sweep():
    """Run JOB at many points (learning rates, seeds, sizes) as Slurm job arrays, operated as one.

    `hpcorch sweep JOB --grid KEY=V1,V2 [--grid ...]` submits; `hpcorch sweep status NAME` compares."""


@sweep.command("submit")
@job_argument
@profile_option()
@click.option("--grid", multiple=True, metavar="KEY=V1,V2", help="An axis of the cross product (repeatable).")
@click.option("--zip", "zipped", multiple=True, metavar="KEY=V1,V2",
              help="Lists taken in step, all as long (repeatable); crossed with --grid.")
@click.option("--list", "list_file", type=click.Path(dir_okay=False),
              help="A file with one point per line: KEY=VALUE words.")
@click.option("--sample", multiple=True, metavar="KEY=KIND:A,B",
              help="A random value per point: uniform:LOW,HIGH, loguniform:LOW,HIGH, int:LOW,HIGH, choice:V1,V2.")
@click.option("--samples", type=click.IntRange(1), default=1, show_default=True, help="How many points --sample draws.")
@click.option("--seed", type=int, default=0, show_default=True, help="The seed of --sample's draws.")
@click.option("--name", help="The sweep's name and folder [default: JOB_NAME-sweep-DATE-TIME].")
@click.option("--max-parallel", type=click.IntRange(1), help="At most K points run at once (the array's %K).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key for every point.")
@click.option("--root", type=click.Path(file_okay=False),
              help="The sweep's folder (its points' run directories inside) [default: RUN_ROOT/NAME].")
@click.option("--dry-run", is_flag=True, help="Print the array script(s) and the point table; submit nothing.")
@click.option("--check", is_flag=True,
              help="Ask the live cluster whether it would accept each array (sbatch --test-only).")
@click.option("--remote/--here", "remote", default=None,
              help="Submit on the profile's login node over SSH (default: when the profile has login: and "
                   "this machine has no sbatch); status, cancel and resume of the sweep then run there too.")
@click.option("--code", "code_dir", type=click.Path(exists=True, file_okay=False),
              help="With --remote: a folder synced to the login node; the sweep is submitted from that copy.")
@template_option
@force_option
@json_option("Print the submitted sweep as JSON on stdout.")
def submit(job, profile_name, grid, zipped, list_file, sample, samples, seed, name, max_parallel, overrides, root,
           dry_run, check, remote, code_dir, template_dir, force=False, as_json=False):
    """Submit JOB at every point: one job array per resource shape, each point a whole hpcorch job
    with its own run directory (SWEEP/POINT), lease, restart budgets and summary."""
    from hpcorch.service import sweep as service
    from hpcorch.service.sweep import SweepAxes

    started = time.perf_counter()
    axes = SweepAxes(list(grid), list(zipped), list_file, list(sample), samples if sample else 0, seed)
    from hpcorch.cli.views import point_lines

    sp = service.plan_sweep(job, profile_name, axes, name, max_parallel, list(overrides), root,
                            template_dir=template_dir, force=force, code_root=code_dir)
    if not dry_run and _goes_remote(sp, remote):
        point_args = _point_args(grid, zipped, sample, samples, seed, max_parallel) + \
            (["--root", root] if root else [])
        _submit_remote(sp, point_args, code_dir, list_file, template_dir, check, force, as_json, started)
        return
    if code_dir is not None:
        raise HpcorchError("--code syncs a folder to the login node: it needs --remote (or a profile with "
                           "login: on a machine without Slurm)")
    if dry_run or check:
        scripts = service.render_sweep(sp)
        if check:
            for answer in service.check_sweep(scripts):
                click.echo(answer)
            return
        for script in scripts:
            click.echo(script)
        click.echo("\n".join(point_lines(service.point_table(sp))))
        return
    sw = service.submit_sweep(sp)
    arrays = ", ".join(a["id"] for a in sw.record["arrays"])
    click.echo(f"sweep {sw.name}: {len(sp.points)} points in {len(sw.record['arrays'])} array(s) ({arrays}); "
               f"folder {sw.root} ({time.perf_counter() - started:.1f} s)", err=True)
    if as_json:
        click.echo(json.dumps({"name": sw.name, "root": str(sw.root), "arrays": sw.record["arrays"]}))


def _goes_remote(sp, remote: bool | None) -> bool:
    from hpcorch.service.sweepremote import goes_remote

    return goes_remote(sp, remote)


def _point_args(grid, zipped, sample, samples, seed, max_parallel) -> list[str]:
    """The options that make the points, as the login node's ``hpcorch sweep`` takes them."""
    args = [a for value in grid for a in ("--grid", value)] + [a for value in zipped for a in ("--zip", value)]
    if sample:
        args += [a for value in sample for a in ("--sample", value)] + ["--samples", str(samples), "--seed", str(seed)]
    return args + (["--max-parallel", str(max_parallel)] if max_parallel else [])


def _submit_remote(sp, point_args, code_dir, list_file, template_dir, check, force, as_json, started) -> None:
    from hpcorch.service import sweepremote

    extra = sweepremote.RemoteSweep(code_dir, list_file, template_dir)
    done = sweepremote.submit(sp, point_args, extra, check=check, force=force)
    if check:
        click.echo(done)
        return
    arrays = ", ".join(a["id"] for a in done["arrays"])
    click.echo(f"sweep {done['name']}: {len(sp.points)} points in {len(done['arrays'])} array(s) ({arrays}) on "
               f"{done['host']}; folder {done['root']} there ({time.perf_counter() - started:.1f} s)", err=True)
    if as_json:
        click.echo(json.dumps(done))


def _remote_record(name: str) -> dict | None:
    """Which login node holds sweep ``name`` (submitted from here with --remote), or None."""
    from hpcorch.service.sweepremote import recorded

    return recorded(name)


def _forward(record: dict, args: list[str]) -> str:
    from hpcorch.service.sweepremote import forward

    return forward(record, args).decode(errors="replace")


@sweep.command("status")
@click.argument("name")
@click.option("--sort", metavar="COLUMN", help="Sort by a column (final_loss, val_loss, tokens_per_s, ...); "
                                               "-COLUMN: descending.")
@json_option()
def status(name, sort, as_json):
    """One row per point of sweep NAME: parameters, state, restarts, step, final and validation
    loss, tokens/s, goodput."""
    from hpcorch.cli.views import sweep_status_lines, text

    record = _remote_record(name)
    if record is not None:  # the login node answers, from its own records
        from hpcorch.service.sweepremote import status as remote_status

        click.echo(text(remote_status(record, sort), as_json, sweep_status_lines))
        return
    from hpcorch.service.sweepops import sweep_status

    click.echo(text(sweep_status(name, sort=sort), as_json, sweep_status_lines))


@sweep.command("cancel")
@click.argument("name")
@click.option("--point", "points", multiple=True, help="Only this point (its number or name; repeatable).")
def cancel(name, points):
    """Cancel the points of sweep NAME (all, or --point ones); `hpcorch sweep resume` continues them."""
    record = _remote_record(name)
    if record is not None:
        click.echo(_forward(record, ["sweep", "cancel", name, *[a for p in points for a in ("--point", p)]]), nl=False)
        return
    from hpcorch.service.sweepops import cancel_sweep

    for line in cancel_sweep(name, list(points)):
        click.echo(line)


@sweep.command("resume")
@click.argument("name")
def resume(name):
    """Submit again only the points of sweep NAME that did not complete (and are not running)."""
    record = _remote_record(name)
    if record is not None:  # forwarded; the points it resubmits are registered here too
        from hpcorch.service.sweepremote import resume as remote_resume

        click.echo(remote_resume(record), nl=False)
        return
    from hpcorch.service.sweepops import resume_sweep

    sw, submitted, live = resume_sweep(name)
    if live:
        click.echo(f"still live, left alone: {', '.join(live)}", err=True)
    if not submitted:
        click.echo(f"sweep {sw.name}: nothing to resume (every point completed or is live)")
        return
    click.echo(f"sweep {sw.name}: resubmitted {len(submitted)} point(s): {', '.join(submitted)} "
               f"(array {sw.record['arrays'][-1]['id']})")


@sweep.command("run-point", hidden=True)
@click.argument("root", type=click.Path(file_okay=False))
def run_point(root):
    """One point of a local sweep (the runner starts it with HPCORCH_ARRAY_TASK set)."""
    from hpcorch.service.sweep import run_point as run

    raise SystemExit(run(root))
