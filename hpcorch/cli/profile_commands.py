"""``hpcorch profile ...``: list, show, validate, discover, diff and slurm-conf, over
:mod:`hpcorch.service.profiles`.

Like the rest of the CLI, imports stay lazy: none of these commands imports torch or submitit.
"""
from __future__ import annotations

import json
import sys

import click

from hpcorch.cli.options import json_option, profile_argument


@click.group()
def profile():
    """List, show, validate, discover and diff cluster profiles."""


@profile.command("list")
@json_option()
def profile_list(as_json):
    """List the profiles found by name: yours ($HPCORCH_PROFILE_PATH, $HPCORCH_HOME/profiles), then the shipped ones."""
    from hpcorch.cli.views import profile_lines, text
    from hpcorch.service import profiles

    click.echo(text(profiles.list_profiles(), as_json, profile_lines))


@profile.command("show")
@profile_argument("name", required=False)
@json_option("The same, as JSON.")
def profile_show(name, as_json):
    """Print a profile as hpcorch understands it (defaults filled in)."""
    from hpcorch.service import profiles

    data = profiles.show(name)
    click.echo(json.dumps(data, indent=2) if as_json else profiles.as_yaml(data), nl=as_json)


@profile.command("validate")
@click.argument("names", nargs=-1, required=True)
@json_option("One JSON object per valid profile, in a list.")
def profile_validate(names, as_json):
    """Validate one or more profiles (names or paths); exit 2 on the first error."""
    from hpcorch.cli.views import validated_line
    from hpcorch.service import profiles

    rows = []
    for name in names:  # each "ok" line before the next profile is read, as a long list is checked
        rows.append(profiles.validate(name))
        if not as_json:
            click.echo(validated_line(rows[-1]))
    if as_json:
        click.echo(json.dumps(rows, indent=2))


@profile.command("discover")
@click.option("--name", help="The profile's name [default: Slurm's ClusterName].")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the draft to this file instead of standard output.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
def profile_discover(name, output, force):
    """Write a draft profile of the cluster this login node's Slurm reaches: nodes, GPUs,
    features, partitions, switch tree, QOS; what Slurm cannot know is marked FILL IN."""
    from hpcorch.service import profiles

    text = profiles.discover(name=name, output=output, force=force)
    if output:
        click.echo(f"wrote {output}: check the FILL IN lines, then `hpcorch profile validate {output}`", err=True)
    else:
        click.echo(text, nl=False)


@profile.command("diff")
@profile_argument("name")
@json_option("The drifts as a JSON list of strings.")
def profile_diff(name, as_json):
    """Show where profile NAME and the live cluster disagree, one line per drift: exit 0 when
    they agree, 1 on drift, 2 on errors (like diff)."""
    from hpcorch.cli.views import text
    from hpcorch.service import profiles

    lines = profiles.drift(name)
    if as_json or lines:
        click.echo(text(lines, as_json, list))
    sys.exit(1 if lines else 0)


@profile.command("slurm-conf")
@click.argument("name", default="devcluster")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="slurm-conf", show_default=True,
              help="Folder to write slurm.conf, gres.conf and topology.conf into.")
@click.option("--devcluster", "dev", is_flag=True,
              help="Write the files for a dev cluster on this machine (adds cgroup.conf and slurmdbd.conf).")
@click.option("--state-dir", type=click.Path(file_okay=False), help="The dev cluster's state directory.")
def profile_slurm_conf(name, out_dir, dev, state_dir):
    """Generate Slurm's configuration files from a cluster profile."""
    from hpcorch.service import profiles

    for path in profiles.slurm_conf(name, out_dir, devcluster=dev, state_dir=state_dir):
        click.echo(path)
