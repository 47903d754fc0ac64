"""``hpcorch health``: this node's pre-flight checks from the command line (no torch unless
``--allreduce``)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hpcorch.cli.completion import complete_profiles
from hpcorch.errors import HpcorchError


@click.command()
@click.option("--profile", "-p", "profile_name", default=None, shell_complete=complete_profiles,
              help="Cluster profile whose floors and adapters to check [default: $HPCORCH_PROFILE, else local].")
@click.option("--run-dir", default=None,
              help="Check free space on this folder's file system and write the report to "
                   "RUN_DIR/health/attempt-N/NODE.json [default: check the current folder, write nothing].")
@click.option("--root", default=None,
              help="System root to read /dev and /sys below [default: $HPCORCH_SYSTEM_ROOT, else /].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--allreduce", is_flag=True,
              help="Also the all-reduce among the job's nodes: run it in a Slurm step with one task per node.")
def health(profile_name, run_dir, root, as_json, allreduce):
    """Check this node before training: visible GPUs, InfiniBand ports, memory, disk and /dev/shm.

    One line per check; exit 0 when every check passed, 4 when one failed.
    """
    from hpcorch.spec.profile import load_profile
    from hpcorch.batch.health.checks import node_name
    from hpcorch.batch.health.criteria import for_node
    from hpcorch.batch.health.preflight import exit_code, run_preflight

    if root is not None and not Path(root).is_dir():
        raise HpcorchError(f"--root: expected a directory, got {root!r}")
    if allreduce and "SLURM_PROCID" not in os.environ:
        raise HpcorchError("--allreduce: expected to run in a Slurm job step (srun --ntasks-per-node=1); "
                           "SLURM_PROCID is not set")
    prof = load_profile(profile_name)
    criteria, notes = for_node(prof, node_name())
    report = run_preflight(criteria, run_dir, root=root, allreduce=allreduce)
    report.notes[:0] = notes
    if as_json:
        click.echo(report.to_json())
    else:
        for check in report.checks:
            click.echo(check.line())
        for note in report.notes:
            click.echo(f"note: {note}")
        click.echo(report.summary())
    sys.exit(exit_code(report))
