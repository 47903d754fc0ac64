"""``hpcorch remote connect|status|disconnect|run``: the SSH connection agent, over
:mod:`hpcorch.service.remote`.

Imports stay lazy: nothing here imports paramiko (only the agent process does).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import click

from hpcorch.cli.options import json_option, profile_argument


@click.group()
def remote():
    """Work from a laptop: the SSH connection to a profile's login node (one login per session)."""


@remote.command("connect")
@profile_argument()
@click.option("--accept-new", is_flag=True,
              help="Store the host key when it is unknown (never when it changed), as OpenSSH's accept-new.")
def connect(profile, accept_new):
    """Connect to PROFILE's login node (or reuse the connection) and check its hpcorch version."""
    from hpcorch.cli.views import connected_line
    from hpcorch.service import remote as ssh

    click.echo(connected_line(ssh.connect(profile, accept_new=accept_new)))


@remote.command("status")
@profile_argument(required=False)
@json_option()
def status(profile, as_json):
    """The running connection agents (all, or PROFILE's): host, pid, since, idle, bytes, commands."""
    from hpcorch.cli.views import agents_lines, text
    from hpcorch.service import remote as ssh

    click.echo(text(ssh.agents(profile), as_json, agents_lines))


@remote.command("disconnect")
@profile_argument(required=False)
def disconnect(profile):
    """Close the connection to PROFILE's login node (all connections without PROFILE)."""
    from hpcorch.cli.views import disconnected_line
    from hpcorch.service import remote as ssh

    click.echo(disconnected_line(ssh.disconnect(profile) if profile is not None else ssh.disconnect_all()))


def _stream(out: TextIO) -> Callable[[bytes], None]:
    """Write a remote command's bytes through as they come (binary-safe, unbuffered)."""
    return lambda b: (out.buffer.write(b), out.buffer.flush())


@remote.command("run", context_settings={"ignore_unknown_options": True})
@profile_argument()
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--cwd", help="Run in this folder of the login node (default: the home).")
def run(profile, argv, cwd):
    """Run a command on PROFILE's login node over the shared connection; exit with its status."""
    from hpcorch.service import remote as ssh

    sys.exit(ssh.run(profile, list(argv), cwd, on_stdout=_stream(sys.stdout), on_stderr=_stream(sys.stderr)))
