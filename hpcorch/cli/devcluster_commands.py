"""``hpcorch devcluster ...``: the real Slurm cluster on this machine, over :mod:`hpcorch.service.devcluster`."""
from __future__ import annotations

import json

import click

from hpcorch.cli.options import devcluster_options, json_option


@click.group()
def devcluster():
    """A real Slurm cluster on this machine (root): emulated nodes and GPUs, accounting."""


@devcluster.command("up")
@devcluster_options
@click.option("--timeout", type=float, default=180, show_default=True, help="Seconds to wait for idle nodes.")
def devcluster_up(profile_name, state_dir, timeout):
    """Start munged, MariaDB, slurmdbd, slurmctld and one slurmd per node; wait until idle."""
    from hpcorch.service import devcluster as dev

    dev.up(profile_name, state_dir, timeout_s=timeout, log=click.echo)


@devcluster.command("down")
@devcluster_options
def devcluster_down(profile_name, state_dir):
    """Cancel the cluster's jobs and stop exactly the daemons that `up` started."""
    from hpcorch.service import devcluster as dev

    dev.down(profile_name, state_dir, log=click.echo)


@devcluster.command("status")
@devcluster_options
@json_option("State directory, daemons' pids (null: stopped) and whether the cluster is up, as JSON.")
def devcluster_status(profile_name, state_dir, as_json):
    """Show the daemons and sinfo."""
    from hpcorch.service import devcluster as dev

    if as_json:
        click.echo(json.dumps(dev.status(profile_name, state_dir), indent=2))
    else:
        click.echo(dev.status_text(profile_name, state_dir))


@devcluster.command("env")
@devcluster_options
def devcluster_env(profile_name, state_dir):
    """Print the line a shell needs: eval "$(hpcorch devcluster env)"."""
    from hpcorch.service import devcluster as dev

    click.echo(dev.env_line(profile_name, state_dir))


@devcluster.command("install")
def devcluster_install():
    """Install the Debian packages the dev cluster needs (apt-get, as root)."""
    from hpcorch.service import devcluster as dev

    dev.install(log=click.echo)
