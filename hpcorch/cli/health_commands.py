"""``hpcorch health``: this node's pre-flight checks from the command line, over
:mod:`hpcorch.service.health` (no torch unless ``--allreduce``)."""
from __future__ import annotations

import sys

import click

from hpcorch.cli.options import json_option, profile_option


@click.command()
@profile_option("Cluster profile whose floors and adapters to check [default: $HPCORCH_PROFILE, else local].")
@click.option("--run-dir", default=None,
              help="Check free space on this folder's file system and write the report to "
                   "RUN_DIR/health/attempt-N/NODE.json [default: check the current folder, write nothing].")
@click.option("--root", default=None,
              help="System root to read /dev and /sys below [default: $HPCORCH_SYSTEM_ROOT, else /].")
@json_option("Print the report as JSON.")
@click.option("--allreduce", is_flag=True,
              help="Also the all-reduce among the job's nodes: run it in a Slurm step with one task per node.")
def health(profile_name, run_dir, root, as_json, allreduce):
    """Check this node before training: visible GPUs, InfiniBand ports, memory, disk and /dev/shm.

    One line per check; exit 0 when every check passed, 4 when one failed.
    """
    from hpcorch.cli.views import health_lines
    from hpcorch.service import health as preflight

    report = preflight.check(profile_name, run_dir, root=root, allreduce=allreduce)
    click.echo(report.to_json() if as_json else "\n".join(health_lines(report)))
    sys.exit(preflight.exit_code(report))
