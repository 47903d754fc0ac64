"""``hpcorch nodes ...``: the quarantined nodes, and releasing one, over :mod:`hpcorch.service.nodes`."""
from __future__ import annotations

import json

import click

from hpcorch.cli.options import json_option, profile_option


@click.group(invoke_without_command=True)
@click.pass_context
def nodes(ctx):
    """Nodes kept out of your jobs (quarantine): list them, or clear one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(nodes_list)


@nodes.command("list")
@profile_option("Only this profile's nodes (a name or a path) [default: every profile].")
@click.option("--history", is_flag=True, help="Every quarantine recorded, expired and cleared ones too.")
@json_option()
def nodes_list(profile_name=None, history=False, as_json=False):
    """List quarantined nodes with why and until when; lemons failed twice or more in a week."""
    from hpcorch.cli.views import quarantine_lines
    from hpcorch.service import nodes as quarantine

    found = quarantine.quarantined(profile_name, history=history)
    click.echo(json.dumps(found["nodes"], indent=2) if as_json else "\n".join(quarantine_lines(found)))


@nodes.command("clear")
@click.argument("node")
@profile_option("Only in this profile [default: every profile].")
def nodes_clear(node, profile_name):
    """Release NODE from quarantine now: the next job may use it again."""
    from hpcorch.cli.views import released_line
    from hpcorch.service import nodes as quarantine

    click.echo(released_line(node, quarantine.release(node, profile_name)))
