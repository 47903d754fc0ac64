"""``hpcorch profile ...``: list, show, validate, discover, diff and slurm-conf, as CLI commands.

Like the rest of the CLI, imports stay lazy: none of these commands imports torch or submitit.
"""
from __future__ import annotations

import json
import sys

import click

from hpcorch.cli.completion import complete_profiles


@click.group()
def profile():
    """List, show, validate, discover and diff cluster profiles."""


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profile_list(as_json):
    """List the profiles found by name: yours ($HPCORCH_PROFILE_PATH, $HPCORCH_HOME/profiles), then the shipped ones."""
    from hpcorch.spec.profile import list_profiles, load_profile

    rows = []
    for name in list_profiles():
        prof = load_profile(name)
        rows.append({"name": name, "scheduler": prof.scheduler, "nodes": len(prof.all_hosts()),
                     "partitions": [p.name for p in prof.partitions], "description": prof.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<12} {'kind':<6} {'nodes':>5}        {'partitions':<24} description")
    for row in rows:
        click.echo(f"{row['name']:<12} {row['scheduler']:<6} {row['nodes']:>5} nodes  "
                   f"{','.join(row['partitions']):<24} {row['description']}")


@profile.command("show")
@click.argument("name", required=False, shell_complete=complete_profiles)
@click.option("--json", "as_json", is_flag=True, help="The same, as JSON.")
def profile_show(name, as_json):
    """Print a profile as hpcorch understands it (defaults filled in)."""
    from hpcorch.spec.profile import load_profile
    from hpcorch.spec.schema import to_dict
    from hpcorch.spec.yamlio import dump_yaml

    data = to_dict(load_profile(name))
    click.echo(json.dumps(data, indent=2) if as_json else dump_yaml(data), nl=as_json)


@profile.command("validate")
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per valid profile, in a list.")
def profile_validate(names, as_json):
    """Validate one or more profiles (names or paths); exit 2 on the first error."""
    from hpcorch.spec.profile import load_profile

    rows = []
    for name in names:
        prof = load_profile(name)
        rows.append({"profile": name, "ok": True, "nodes": len(prof.all_hosts()), "partitions": len(prof.partitions)})
        if not as_json:
            click.echo(f"{name}: ok ({rows[-1]['nodes']} nodes, {rows[-1]['partitions']} partitions)")
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
    from pathlib import Path

    from hpcorch.cluster.discover import discover
    from hpcorch.errors import ConfigError

    if output and Path(output).exists() and not force:
        raise ConfigError(output, "", "exists; pass --force to overwrite it")
    text = discover(name=name)
    if not output:
        click.echo(text, nl=False)
        return
    Path(output).write_text(text)
    click.echo(f"wrote {output}: check the FILL IN lines, then `hpcorch profile validate {output}`", err=True)


@profile.command("diff")
@click.argument("name", shell_complete=complete_profiles)
@click.option("--json", "as_json", is_flag=True, help="The drifts as a JSON list of strings.")
def profile_diff(name, as_json):
    """Show where profile NAME and the live cluster disagree, one line per drift: exit 0 when
    they agree, 1 on drift, 2 on errors (like diff)."""
    from hpcorch.cluster.drift import diff_profile

    lines = diff_profile(name)
    for line in [json.dumps(lines, indent=2)] if as_json else lines:
        click.echo(line)
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
    from pathlib import Path

    from hpcorch.spec.profile import load_profile
    from hpcorch.cluster.slurmconf import LocalCluster, write_configs

    local = None
    if dev:
        from hpcorch.cluster.devcluster import DEFAULT_STATE_DIR

        local = LocalCluster(Path(state_dir) if state_dir else DEFAULT_STATE_DIR)
    for path in write_configs(load_profile(name), Path(out_dir), local):
        click.echo(path)
