"""Scale of profile validation, plan, dry run and slurm-conf at 16,384 nodes, in one process.

The profile is generated: 12,288 GPU nodes (``gpu[00001-12288]``) in partition ``gpu`` and again,
written name by name (``gpu00001,gpu00002,...``), in ``urgent``; 4,096 CPU nodes in ``cpu``; a
switch tree of 512 leaves of 32 nodes, 16 spines of 32 leaves and one core spine. The job asks
for 64 GPU nodes with a constraint and excludes 1,000 hosts written name by name.

Baselines measured in the same run: ``yaml.safe_load`` of the same profile file (parsing only,
with hpcorch's own YAML loader as well) and, when Slurm is installed, ``scontrol show hostnames``
expanding the ``urgent`` host list (a process, so it includes its start-up).
Usage: PYTHONPATH=. python bench/bench_scale.py [--repeat N] [--nodes N]

Measured on the 2-core shared dev VM (Python 3.11), 16,384 nodes, median of 3 (before) / 5 (after),
seconds and x yaml.safe_load of the same file (0.132 s in both runs):

    case                            before (44da20b)     after
    validate (load_profile)         0.985   7.46x        0.177  1.35x
    plan                            0.128   0.97x        0.001  0.00x
    dry run (render)                0.006   0.05x        0.007  0.05x
    slurm-conf (write_configs)      3.466  26.26x        0.132  1.01x
    expand urgent (12,288 names)    0.777   5.89x        0.007  0.05x
    compress urgent                 0.037 (python-hostlist)  0.022
    scontrol show hostnames         0.011 (a process: start-up included)

python-hostlist's collect_hostlist is not what was slow (about n log n: 0.05 s at 16k, 0.25 s
at 64k names); it was replaced because it writes forms Slurm refuses (r1-n1,r2-n1 -> r[1-2]-n1,
"Invalid hostlist" in scontrol 22.05). The slow parts were the quadratic split regex, a
partition scan per host in node_type_of, and a list membership test per host in plan.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpcorch.cluster.slurmconf import write_configs  # noqa: E402
from hpcorch.plan.plan import make_plan  # noqa: E402
from hpcorch.render.sbatch import render_sbatch  # noqa: E402
from hpcorch.spec.job import load_job  # noqa: E402
from hpcorch.spec.profile import load_profile  # noqa: E402
from hpcorch.spec.units import compress_hostlist, expand_hostlist  # noqa: E402
from hpcorch.spec.yamlio import read_yaml  # noqa: E402

LEAF, LEAVES_PER_SPINE = 32, 32


def profile_data(nodes: int) -> dict:
    """A profile of ``nodes`` hosts (a multiple of 128): 3/4 GPU, 1/4 CPU, a three-level tree."""
    gpus, cpus = nodes * 3 // 4, nodes // 4
    gpu_hosts = [f"gpu{i:05d}" for i in range(1, gpus + 1)]
    hosts = gpu_hosts + [f"cpu{i:04d}" for i in range(1, cpus + 1)]
    leaves = [{"name": f"leaf{i + 1:03d}", "nodes": ",".join(hosts[i * LEAF:(i + 1) * LEAF])}
              for i in range(len(hosts) // LEAF)]
    spines = [{"name": f"spine{s + 1:02d}",
               "switches": [leaf["name"] for leaf in leaves[s * LEAVES_PER_SPINE:(s + 1) * LEAVES_PER_SPINE]]}
              for s in range(-(-len(leaves) // LEAVES_PER_SPINE))]
    spines.append({"name": "core", "switches": [s["name"] for s in spines]})
    return {
        "name": "scale", "scheduler": "slurm",
        "node_types": {
            "h100": {"cpus": 112, "memory_mb": 2000000, "features": ["h100", "ib", "ndr"],
                     "gpus": {"count": 8, "model": "H100", "memory_gb": 80, "peak_tflops": 989.0}},
            "cpu": {"cpus": 128, "memory_mb": 512000, "features": ["cpu", "ib"]},
        },
        "partitions": [
            {"name": "gpu", "nodes": f"gpu[00001-{gpus:05d}]", "node_type": "h100", "default": True},
            {"name": "urgent", "nodes": ",".join(gpu_hosts), "node_type": "h100", "priority_tier": 10},
            {"name": "cpu", "nodes": f"cpu[0001-{cpus:04d}]", "node_type": "cpu"},
        ],
        "network": {"switches": {"leaves": leaves, "spines": spines}},
    }


def job_overrides() -> list[str]:
    exclude = ",".join(f"gpu{i:05d}" for i in range(2, 2002, 2))
    return ["resources.partition=gpu", "resources.nodes=64", "resources.gpus_per_node=8",
            "resources.tasks_per_node=8", "trainer.micro_batch=1", "trainer.global_batch=512",
            "resources.constraint=h100&ib", f"resources.exclude={exclude}"]


def timed(fn, repeat: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=16384)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    data = profile_data(args.nodes)
    prof_path = tmp / "scale.yaml"
    prof_path.write_text(yaml.safe_dump(data, sort_keys=False, width=1 << 30))
    job = load_job(REPO / "hpcorch" / "jobs" / "gpt-tiny.yaml", job_overrides())
    times: dict[str, float] = {}
    times["yaml.safe_load (baseline)"], _ = timed(lambda: yaml.safe_load(prof_path.read_text()), args.repeat)
    times["hpcorch read_yaml"], _ = timed(lambda: read_yaml(prof_path), args.repeat)
    if shutil.which("scontrol"):
        conf = tmp / "slurm.conf"
        conf.write_text("ClusterName=bench\nSlurmctldHost=localhost\n")
        cmd = ["scontrol", "show", "hostnames", data["partitions"][1]["nodes"]]
        times["scontrol show hostnames (urgent)"], _ = timed(lambda: subprocess.run(
            cmd, check=True, capture_output=True, env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"}),
            args.repeat)
    times["validate (load_profile)"], profile = timed(lambda: load_profile(prof_path), args.repeat)
    times["plan"], plan = timed(lambda: make_plan(job, profile, run_dir=tmp / "run"), args.repeat)
    times["dry run (render)"], _ = timed(lambda: render_sbatch(plan), args.repeat)
    times["slurm-conf (write_configs)"], _ = timed(lambda: write_configs(profile, tmp / "conf"), args.repeat)
    names = profile.partition("urgent").hosts
    urgent_nodes = data["partitions"][1]["nodes"]
    times["expand urgent (name by name)"], _ = timed(lambda: expand_hostlist(urgent_nodes), args.repeat)
    times["compress urgent"], _ = timed(lambda: compress_hostlist(names), args.repeat)
    try:
        import hostlist  # python-hostlist, in the test extra: what hpcorch used before
        times["python-hostlist collect_hostlist"], _ = timed(lambda: hostlist.collect_hostlist(names), args.repeat)
    except ImportError:
        pass
    base = times["yaml.safe_load (baseline)"]
    print(f"{args.nodes} nodes, {len(prof_path.read_bytes()) / 1e6:.1f} MB profile, median of {args.repeat}")
    print(f"{'case':<36}{'median s':>10}{'x safe_load':>13}")
    for name, t in times.items():
        print(f"{name:<36}{t:>10.3f}{t / base:>13.2f}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
