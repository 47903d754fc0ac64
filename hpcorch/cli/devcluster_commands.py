"""``hpcorch devcluster ...``: the real Slurm cluster on this machine, as CLI commands."""
from __future__ import annotations

import click


def devcluster_options(func):
    func = click.option("--state-dir", type=click.Path(file_okay=False),
                        help="Private folder for the cluster's configs, sockets, pid files, logs "
                             "[default: $HPCORCH_DEVCLUSTER_DIR or /tmp/hpcorch-devcluster].")(func)
    func = click.option("--profile", "-p", "profile_name", default="devcluster", show_default=True,
                        help="The dev cluster's profile: a name or a YAML file.")(func)
    return func


def open_devcluster(profile_name, state_dir):
    """The DevCluster the shared --profile/--state-dir options name."""
    from pathlib import Path

    from hpcorch.cluster.devcluster import DevCluster

    return DevCluster(profile_name, Path(state_dir) if state_dir else None)


@click.group()
def devcluster():
    """A real Slurm cluster on this machine (root): emulated nodes and GPUs, accounting."""


@devcluster.command("up")
@devcluster_options
@click.option("--timeout", type=float, default=180, show_default=True, help="Seconds to wait for idle nodes.")
def devcluster_up(profile_name, state_dir, timeout):
    """Start munged, MariaDB, slurmdbd, slurmctld and one slurmd per node; wait until idle."""
    open_devcluster(profile_name, state_dir).up(timeout_s=timeout, log=click.echo)


@devcluster.command("down")
@devcluster_options
def devcluster_down(profile_name, state_dir):
    """Cancel the cluster's jobs and stop exactly the daemons that `up` started."""
    open_devcluster(profile_name, state_dir).down(log=click.echo)


@devcluster.command("status")
@devcluster_options
@click.option("--json", "as_json", is_flag=True, help="State directory, daemons' pids (null: stopped) and "
                                                       "whether the cluster is up, as JSON.")
def devcluster_status(profile_name, state_dir, as_json):
    """Show the daemons and sinfo."""
    cluster = open_devcluster(profile_name, state_dir)
    if as_json:
        import json

        click.echo(json.dumps({"state_dir": str(cluster.local.state_dir), "daemons": cluster.running(),
                               "up": cluster.is_up()}, indent=2))
        return
    click.echo(cluster.status())


@devcluster.command("env")
@devcluster_options
def devcluster_env(profile_name, state_dir):
    """Print the line a shell needs: eval "$(hpcorch devcluster env)"."""
    click.echo(open_devcluster(profile_name, state_dir).env_line())


@devcluster.command("install")
def devcluster_install():
    """Install the Debian packages the dev cluster needs (apt-get, as root)."""
    from hpcorch.cluster.devcluster import install

    install(log=click.echo)
