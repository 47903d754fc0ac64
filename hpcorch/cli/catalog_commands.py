"""``hpcorch jobs list``: the jobs found by name, over :mod:`hpcorch.service.catalog`."""
from __future__ import annotations

import click

from hpcorch.cli.options import json_option


@click.group()
def jobs():
    """The jobs found by name (hpcorch plan gpt2-124m works from any folder)."""


@jobs.command("list")
@json_option()
def jobs_list(as_json):
    """List the jobs found by name: yours in $HPCORCH_HOME/jobs, then the shipped ones."""
    from hpcorch.cli.views import catalog_lines, text
    from hpcorch.service import catalog

    click.echo(text(catalog.jobs(), as_json, catalog_lines))
