"""The jobs found by name, as data: what ``hpcorch jobs list`` shows (no torch: the parameter
count is arithmetic on the model's shape)."""
from __future__ import annotations


def jobs() -> list[dict]:
    """One dict per job on the catalog's search path (yours in $HPCORCH_HOME/jobs, then the
    shipped ones): name, path, nodes, GPUs per node, parameters and description."""
    from hpcorch.spec.catalog import names
    from hpcorch.spec.job import load_job
    from hpcorch.train.models import spec_of  # torch-free: the family's arithmetic

    rows = []
    for name, path in names("jobs").items():
        job = load_job(path)
        model = job.trainer.model
        res = job.resources
        rows.append({"name": name, "path": str(path), "nodes": res.nodes_directive if res.is_range else res.nodes,
                     "gpus_per_node": job.resources.gpus_per_node,
                     "parameters": spec_of(model).shapes.num_params(model),
                     "description": job.description})
    return rows

