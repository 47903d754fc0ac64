"""``hpcorch jobs list``: the jobs found by name, as a CLI command (no torch: the parameter
count is arithmetic on the model's shape)."""
from __future__ import annotations

import json

import click

from hpcorch.util.display import Column, table


@click.group()
def jobs():
    """The jobs found by name (hpcorch plan gpt2-124m works from any folder)."""


@jobs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs_list(as_json):
    """List the jobs found by name: yours in $HPCORCH_HOME/jobs, then the shipped ones."""
    from hpcorch.spec.catalog import names
    from hpcorch.spec.job import load_job
    from hpcorch.train.models import spec_of  # torch-free: the family's arithmetic

    rows = []
    for name, path in names("jobs").items():
        job = load_job(path)
        model = job.trainer.model
        rows.append({"name": name, "path": str(path), "nodes": job.resources.nodes,
                     "gpus_per_node": job.resources.gpus_per_node,
                     "parameters": spec_of(model).shapes.num_params(model),
                     "description": job.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = (Column("name"), Column("nodes", number=True), Column("gpus/node", number=True),
               Column("parameters", number=True), Column("description"))
    cells = [[r["name"], str(r["nodes"]), str(r["gpus_per_node"]), f"{r['parameters'] / 1e6:,.1f}M",
              r["description"]] for r in rows]
    click.echo("\n".join(table(columns, cells)))
