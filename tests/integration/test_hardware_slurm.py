"""The dev-cluster half of test_hardware.py (marked slurm)."""
import re

import pytest

from hpcorch.plan.plan import make_plan
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile


# ----- against the dev cluster (run by the lead; marked slurm) ----------------------------------
@pytest.mark.slurm
@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides, nodes", [
    (["resources.nodes=2", "resources.constraint=grpb"], {"node3", "node4"}),
    (["resources.nodes=2", "resources.constraint='[grpa|grpb]'"], None),
    (["resources.nodes=1", "resources.constraint=emu&grpa"], {"node1", "node2"}),
])
def test_constraints_select_node_groups_on_the_dev_cluster(repo, slurm, tmp_path, overrides, nodes):
    from hpcorch.render.sbatch import render_sbatch
    from hpcorch.spec import units

    job = load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.global_batch=32", "trainer.micro_batch=1", *overrides])
    message = slurm.test_only(render_sbatch(make_plan(job, load_profile("devcluster"), run_dir=tmp_path)))
    found = re.search(r"on nodes (\S+)", message)
    assert "to start at" in message and found, message
    got = set(units.expand_hostlist(found[1]))
    assert got <= nodes if nodes else got in ({"node1", "node2"}, {"node3", "node4"}), message


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_typed_and_untyped_gpu_requests_on_the_dev_cluster(slurm):
    from slurmhelp import script

    from hpcorch.cluster.slurm import SlurmError

    typed = slurm.test_only(script("true", "--nodes=2", "--gpus-per-node=emub:4", "--time=1"))
    assert re.search(r"on nodes node\[3-4\]", typed), typed
    assert "to start at" in slurm.test_only(script("true", "--nodes=4", "--gpus-per-node=4", "--time=1"))
    with pytest.raises(SlurmError):  # two nodes of type emua exist, not three
        slurm.test_only(script("true", "--nodes=3", "--gpus-per-node=emua:1", "--time=1"))
