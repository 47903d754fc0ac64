"""``hpcorch nodes ...``: the quarantined nodes (see :mod:`hpcorch.state.quarantine`), and releasing one."""
from __future__ import annotations

import json

import click

from hpcorch.cli.completion import complete_profiles


@click.group(invoke_without_command=True)
@click.pass_context
def nodes(ctx):
    """Nodes kept out of your jobs (quarantine): list them, or clear one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(nodes_list)


@nodes.command("list")
@click.option("--profile", "-p", "profile_name", default=None, shell_complete=complete_profiles,
              help="Only this profile's nodes (a name or a path) [default: every profile].")
@click.option("--history", is_flag=True, help="Every quarantine recorded, expired and cleared ones too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def nodes_list(profile_name=None, history=False, as_json=False):
    """List quarantined nodes with why and until when; lemons failed twice or more in a week."""
    from hpcorch.state.quarantine import lemons, when
    from hpcorch.state.registry import Registry

    registry = Registry()
    name = _profile_name(profile_name)
    rows = registry.quarantined(name, history=history)
    lemon = lemons(registry.quarantined(name, history=True))
    if as_json:
        click.echo(json.dumps([{**vars(q), "active": q.active(), "lemon": (q.profile, q.node) in lemon}
                               for q in rows], indent=2))
        return
    if not rows:
        click.echo("no node in quarantine" + (f" for profile {name}" if name else ""))
        return
    click.echo(f"{'profile':<12} {'node':<12} {'since':<16} {'until':<16} {'job':<8} reason")
    for q in rows:
        flag = "  [lemon: quarantined again within a week]" if (q.profile, q.node) in lemon else ""
        click.echo(f"{q.profile:<12} {q.node:<12} {when(q.since):<16} {when(q.until):<16} "
                   f"{q.job_id or '-':<8} {q.reason}{flag}")


@nodes.command("clear")
@click.argument("node")
@click.option("--profile", "-p", "profile_name", default=None, shell_complete=complete_profiles,
              help="Only in this profile [default: every profile].")
def nodes_clear(node, profile_name):
    """Release NODE from quarantine now: the next job may use it again."""
    from hpcorch.errors import HpcorchError
    from hpcorch.state.registry import Registry

    name = _profile_name(profile_name)
    if not Registry().release(node, name):
        raise HpcorchError(f"node {node!r} is not in quarantine{f' for profile {name}' if name else ''} "
                           f"(see: hpcorch nodes list)")
    click.echo(f"released {node} from quarantine{f' for profile {name}' if name else ''}")


def _profile_name(ref: str | None) -> str | None:
    """A profile's name from a name or a path (quarantine is keyed by the name)."""
    if ref is None:
        return None
    from hpcorch.spec.profile import load_profile

    return load_profile(ref).name
