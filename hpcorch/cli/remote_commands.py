"""``hpcorch remote connect|status|disconnect|run``: the SSH connection agent as CLI commands.

Imports stay lazy: nothing here imports paramiko (only the agent process does).
"""
from __future__ import annotations

import json
import sys
import time

import click

from hpcorch.cli.completion import complete_profiles
from hpcorch.util.display import duration


@click.group()
def remote():
    """Work from a laptop: the SSH connection to a profile's login node (one login per session)."""


@remote.command("connect")
@click.argument("profile", shell_complete=complete_profiles)
@click.option("--accept-new", is_flag=True,
              help="Store the host key when it is unknown (never when it changed), as OpenSSH's accept-new.")
def connect(profile, accept_new):
    """Connect to PROFILE's login node (or reuse the connection) and check its hpcorch version."""
    from hpcorch.remote.ops import login_of
    from hpcorch.remote.client import Session

    login = login_of(profile)
    session = Session.open(login, accept_new=accept_new)
    version = session.check_version()
    click.echo(f"connected to {session.host} (hpcorch {version}, {session.python}); "
               f"idle timeout {duration(login.persist_s)}")


@remote.command("status")
@click.argument("profile", required=False, shell_complete=complete_profiles)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(profile, as_json):
    """The running connection agents (all, or PROFILE's): host, pid, since, idle, bytes, commands."""
    from hpcorch.remote.ops import login_of
    from hpcorch.remote.client import agents
    from hpcorch.remote.sshconfig import resolve

    rows = agents()
    if profile is not None:
        key = resolve(login_of(profile)).key
        rows = [r for r in rows if r["key"] == key]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no connection agent is running")
        return
    click.echo(f"{'host':<32} {'pid':>7}  {'since':<19} {'idle':>7} {'in':>10} {'out':>10} {'commands':>8}")
    for r in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["since"]))
        click.echo(f"{r['host']:<32} {r['pid']:>7}  {since:<19} {duration(r['idle_s']):>7} "
                   f"{r['bytes_in']:>10} {r['bytes_out']:>10} {r['commands']:>8}")


@remote.command("disconnect")
@click.argument("profile", required=False, shell_complete=complete_profiles)
def disconnect(profile):
    """Close the connection to PROFILE's login node (all connections without PROFILE)."""
    from hpcorch.remote.ops import login_of
    from hpcorch.remote.client import agents, stop
    from hpcorch.remote.client import disconnect as close

    if profile is not None:
        login = login_of(profile)
        click.echo("disconnected" if close(login) else "no connection was open")
        return
    stopped = [r["host"] for r in agents() if stop(r)]
    click.echo(f"disconnected {', '.join(stopped)}" if stopped else "no connection was open")


@remote.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("profile", shell_complete=complete_profiles)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--cwd", help="Run in this folder of the login node (default: the home).")
def run(profile, argv, cwd):
    """Run a command on PROFILE's login node over the shared connection; exit with its status."""
    from hpcorch.remote.ops import login_of
    from hpcorch.remote.client import Session

    session = Session.open(login_of(profile))
    done = session.run(list(argv), stdin=None, cwd=cwd,
                       on_stdout=lambda b: (sys.stdout.buffer.write(b), sys.stdout.buffer.flush()),
                       on_stderr=lambda b: (sys.stderr.buffer.write(b), sys.stderr.buffer.flush()))
    sys.exit(done.code)
