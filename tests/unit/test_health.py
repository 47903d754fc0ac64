"""Pre-flight health checks: specs, criteria, local checks on fake system roots, NVML through a
fake pynvml, reports, the deadline, a real gloo all-reduce among local processes, the CLI and
the dev cluster's emulated hardware (its generated files; the cluster itself is the lead's)."""
from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcorch import protocol
from hpcorch.batch.health import Criteria, NodeReport, check_node, for_job
from hpcorch.batch.health.allreduce import busbw_gbps, port_for, rendezvous
from hpcorch.batch.health.criteria import BadCriteria, preflight_args
from hpcorch.batch.health.report import CHECK_KEYS, SCHEMA_KEYS, read_reports
from hpcorch.cluster.devcluster import make_node_root
from hpcorch.cluster.slurmconf import LocalCluster, slurm_conf, task_prolog, write_configs
from hpcorch.errors import ConfigError
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.state.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
IB_PROFILE = """
name: ibtest
scheduler: slurm
node_types:
  g: {cpus: 8, memory_mb: 16000, gpus: {count: 4, type: emua}}
partitions:
  - {name: batch, nodes: "node[1-2]", node_type: g, default: true}
network:
  infiniband: {hcas: [mlx5_0, mlx5_1], ports: 1, link_rate_gbps: 200}
"""
LOW = dict(min_free_disk_gb=0.0, min_shm_gb=0.0, min_free_memory_gb=0.0)  # floors any machine meets


def _profile(tmp_path, text=IB_PROFILE, extra=""):
    path = tmp_path / "prof.yaml"
    path.write_text(text + extra)
    return load_profile(path)


def _fake_mknod(path, mode, device):
    Path(path).touch()  # mknod needs root; the checks only look at names


def fake_root(tmp_path, name="root", gpus=4, hcas=("mlx5_0", "mlx5_1"), rate=200) -> Path:
    """A healthy node's system root, built as the dev cluster builds its emulated nodes."""
    prof = _profile(tmp_path, IB_PROFILE.replace("count: 4", f"count: {gpus}").replace(
        "[mlx5_0, mlx5_1]", f"[{', '.join(hcas)}]").replace("link_rate_gbps: 200", f"link_rate_gbps: {rate}"))
    root = tmp_path / name
    make_node_root(root, prof, "node1", mknod=_fake_mknod)
    (root / "dev" / "shm").unlink()  # the dev cluster links the machine's; here a folder of our own
    (root / "dev" / "shm").mkdir()
    return root


def crit(**kw) -> Criteria:
    return Criteria(**{"gpus": 4, "ib_ports": ("mlx5_0:1", "mlx5_1:1"), "ib_rate_gbps": 200, **LOW, **kw})


def names_failed(report: NodeReport) -> list[str]:
    return report.failed


# ----- specs -----------------------------------------------------------------------------------
def test_profile_and_job_health_sections(tmp_path):
    prof = _profile(tmp_path, extra="health: {min_busbw_gbps: 5, timeout_s: 45, check_ib_rate: false}\n")
    assert prof.health.min_busbw_gbps == 5.0 and prof.health.timeout_s == 45 and prof.health.allreduce_mb == 16
    assert load_profile("devcluster").health.timeout_s == 30
    job = load_job(REPO / "jobs/gpt-tiny.yaml", ["health.preflight=false", "health.timeout_s=60"])
    assert job.health.preflight is False and job.health.timeout_s == 60
    assert load_job(REPO / "jobs/gpt-tiny.yaml").health.preflight is None  # the profile decides


@pytest.mark.parametrize("extra, key, expected", [
    ("health: {timeout_s: 0}\n", "health.timeout_s", "expected 1 to 600 seconds"),
    ("health: {min_gpu_free_fraction: 2}\n", "health.min_gpu_free_fraction", "expected a fraction"),
    ("health: {min_shm_gb: -1}\n", "health.min_shm_gb", "non-negative"),
    ("health: {iterations: 0}\n", "health.iterations", "positive"),
    ("health: {floor: 3}\n", "health.floor", "unknown key"),
    ("health: {check_ib_rate: maybe}\n", "health.check_ib_rate", "true or false"),
])
def test_bad_profile_health_is_one_line(tmp_path, extra, key, expected):
    with pytest.raises(ConfigError) as err:
        _profile(tmp_path, extra=extra)
    assert err.value.key == key and expected in err.value.message and "prof.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_job_health_names_the_override():
    with pytest.raises(ConfigError) as err:
        load_job(REPO / "jobs/gpt-tiny.yaml", ["health.timeout_s=9999"])
    assert err.value.key == "health.timeout_s" and "--set health.timeout_s" in err.value.source


# ----- criteria --------------------------------------------------------------------------------
def test_criteria_for_a_job_and_its_options(tmp_path):
    prof = _profile(tmp_path, extra="health: {min_busbw_gbps: 12.5, timeout_s: 40}\n")
    job = load_job(REPO / "jobs/gpt-tiny.yaml", ["resources.gpus_per_node=4"])
    c = for_job(prof, job)
    assert (c.gpus, c.ib_ports, c.ib_rate_gbps, c.min_busbw_gbps, c.timeout_s) == \
        (4, ("mlx5_0:1", "mlx5_1:1"), 200, 12.5, 40)
    args = c.to_args()
    assert args[:4] == ["--gpus", "4", "--gpu-vendor", "nvidia"] and "--ib-ports" in args
    assert args[args.index("--ib-ports") + 1] == "mlx5_0:1,mlx5_1:1"
    assert Criteria.from_args(args) == c
    # The job's own deadline wins; the profile may turn the rate check off.
    assert for_job(prof, load_job(REPO / "jobs/gpt-tiny.yaml", ["health.timeout_s=90"])).timeout_s == 90
    no_rate = _profile(tmp_path, extra="health: {check_ib_rate: false}\n")
    assert for_job(no_rate, job.resources).ib_rate_gbps == 0
    assert "--ib-ports" not in for_job(load_profile("local"), job).to_args()  # no HCAs listed
    dev = for_job(load_profile("devcluster"), job).to_args()  # its emulated port
    assert dev[dev.index("--ib-ports") + 1] == "mlx5_0:1"


def test_preflight_args_follow_the_job_switch(tmp_path):
    from hpcorch.plan.plan import make_plan

    prof = load_profile("devcluster")
    plan = make_plan(load_job(REPO / "jobs/gpt-tiny.yaml"), prof, run_dir=tmp_path / "run")
    args = preflight_args(plan)
    assert args[:4] == ["hpcorch.batch.health", "preflight", "--run-dir", str(tmp_path / "run")]
    assert Criteria.from_args(args[4:]) == for_job(prof, plan)
    off = make_plan(load_job(REPO / "jobs/gpt-tiny.yaml", ["health.preflight=false"]), prof, run_dir=tmp_path)
    assert preflight_args(off) is None


@pytest.mark.parametrize("args, expected", [
    (["--gpus", "x"], "--gpus: expected an integer, got 'x'"),
    (["--min-shm-gb", "nan"], "--min-shm-gb: expected a non-negative finite number"),
    (["--min-shm-gb", "-1"], "--min-shm-gb: expected a non-negative finite number"),
    (["--ib-ports", "mlx5_0"], "--ib-ports: expected HCA:PORT entries"),
    (["--timeout-s", "0"], "--timeout-s: expected 1 to 600 seconds"),
    (["--gpu-vendor", "intel"], "--gpu-vendor: expected nvidia or amd"),
    (["--nope", "1"], "--nope"),
])
def test_bad_criteria_options_are_one_line(args, expected):
    with pytest.raises(BadCriteria) as err:
        Criteria.from_args(args)
    assert expected in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=60, deadline=None)
@given(gpus=st.integers(0, 64), rate=st.integers(0, 800), disk=st.floats(0, 1e4, allow_nan=False),
       shm=st.floats(0, 100, allow_nan=False), frac=st.floats(0, 1), iters=st.integers(1, 1000),
       ports=st.lists(st.tuples(st.sampled_from(["mlx5_0", "mlx5_1", "hfi1_0"]), st.integers(1, 2)), max_size=4))
def test_criteria_round_trip(gpus, rate, disk, shm, frac, iters, ports):
    c = Criteria(gpus=gpus, ib_rate_gbps=rate, min_free_disk_gb=disk, min_shm_gb=shm, min_gpu_free_fraction=frac,
                 iterations=iters, ib_ports=tuple(f"{h}:{p}" for h, p in ports))
    assert Criteria.from_args(c.to_args()) == c


# ----- local checks on fake roots --------------------------------------------------------------
def test_healthy_root_passes_every_time(tmp_path):
    root = fake_root(tmp_path)
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURMD_NODENAME": "node1"}
    for _ in range(20):  # no false positives on a healthy node
        report = check_node(crit(), tmp_path, root, env)
        assert report.ok, report.to_json()
    assert report.node == "node1" and report.gpu_source == "device files"
    assert {c.name for c in report.checks} == {"gpus", "ib.mlx5_0/1.state", "ib.mlx5_0/1.rate", "ib.mlx5_1/1.state",
                                               "ib.mlx5_1/1.rate", "host.memory", "host.disk", "host.shm"}
    assert any("NVML not used" in n for n in report.notes) or report.gpu_source == "nvml"


def test_a_hidden_gpu_is_named(tmp_path):
    root = fake_root(tmp_path)
    (root / "dev" / "nvidia3").unlink()
    report = check_node(crit(), tmp_path, root, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    gpus = next(c for c in report.checks if c.name == "gpus")
    assert report.failed == ["gpus"] and (gpus.value, gpus.floor) == (3, 4) and "missing: 3" in gpus.detail
    # Slurm's record of the allocation serves when no CUDA variable is set; no restriction: every file counts.
    assert check_node(crit(), tmp_path, root, {"SLURM_STEP_GPUS": "0,1,2"}).failed == ["gpus"]
    assert check_node(crit(gpus=3), tmp_path, root, {}).ok
    assert not check_node(crit(gpus=2), tmp_path, root, {"CUDA_VISIBLE_DEVICES": "2,3"}).ok


def test_amd_render_nodes(tmp_path):
    root = fake_root(tmp_path, gpus=0)
    (root / "dev" / "dri").mkdir()
    for i in range(128, 130):
        (root / "dev" / "dri" / f"renderD{i}").touch()
    (root / "dev" / "dri" / "card0").touch()
    report = check_node(crit(gpus=2, gpu_vendor="amd"), tmp_path, root, {"ROCR_VISIBLE_DEVICES": "0,1"})
    assert report.ok and report.gpu_source == "device files"
    assert check_node(crit(gpus=3, gpu_vendor="amd"), tmp_path, root, {}).failed == ["gpus"]


def test_ib_port_down_wrong_rate_and_missing_hca(tmp_path):
    root = fake_root(tmp_path)
    ports = root / "sys/class/infiniband"
    (ports / "mlx5_1/ports/1/state").write_text("1: DOWN\n")
    (ports / "mlx5_1/ports/1/phys_state").write_text("3: Disabled\n")
    report = check_node(crit(), tmp_path, root, {})
    assert report.failed == ["ib.mlx5_1/1.state"]
    assert "1: DOWN (3: Disabled); expected 4: ACTIVE" in report.checks[[c.name for c in report.checks].index(
        "ib.mlx5_1/1.state")].detail
    (ports / "mlx5_1/ports/1/state").write_text("4: ACTIVE\n")
    (ports / "mlx5_0/ports/1/rate").write_text("100 Gb/sec (2X HDR)\n")
    assert check_node(crit(), tmp_path, root, {}).failed == ["ib.mlx5_0/1.rate"]
    assert check_node(crit(ib_rate_gbps=0), tmp_path, root, {}).ok  # rate not checked
    assert check_node(crit(ib_ports=("mlx5_2:1",)), tmp_path, root, {}).failed == ["ib.mlx5_2/1.state"]


def test_host_floors(tmp_path):
    root = fake_root(tmp_path)
    report = check_node(crit(min_free_disk_gb=1e9, min_shm_gb=1e9, min_free_memory_gb=1e9), tmp_path, root, {})
    assert report.failed == ["host.memory", "host.disk", "host.shm"]
    disk = next(c for c in report.checks if c.name == "host.disk")
    assert disk.floor == 1e9 and 0 < disk.value < 1e9 and str(tmp_path) in disk.detail
    (root / "dev" / "shm").rmdir()
    assert check_node(crit(), tmp_path, root, {}).failed == ["host.shm"]


def test_root_comes_from_the_environment(tmp_path):
    root = fake_root(tmp_path)
    report = check_node(crit(), tmp_path, env={"HPCORCH_SYSTEM_ROOT": str(root)})
    assert report.root == str(root) and report.ok


def test_a_broken_check_fails_that_check_only(tmp_path, monkeypatch):
    from hpcorch.batch.health import checks

    monkeypatch.setattr(checks, "check_ib", lambda *a: 1 / 0)
    report = check_node(crit(), tmp_path, fake_root(tmp_path), {})
    assert report.failed == ["ib"] and "ZeroDivisionError" in next(c for c in report.checks if c.name == "ib").detail


# ----- NVML through a fake pynvml --------------------------------------------------------------
def fake_pynvml(count=4, free=(80e9,) * 4, ecc=(0,) * 4, pending=False, rows=(0, 0, 0, 0), throttle=0):
    nv = types.ModuleType("pynvml")
    nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC = 1, 0
    nv.nvmlInit = nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: count

    def by_index(i):
        if i >= count:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return i

    nv.nvmlDeviceGetHandleByIndex = by_index
    nv.nvmlDeviceGetHandleByUUID = lambda u: 0
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(free=free[h], total=80e9, used=80e9 - free[h])
    nv.nvmlDeviceGetTotalEccErrors = lambda h, kind, counter: ecc[h]
    nv.nvmlDeviceGetRetiredPagesPendingStatus = lambda h: 1 if pending else 0

    def remapped(h):  # A100 and later: (corrected, uncorrectable, pending, failure)
        if rows is None:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return rows

    nv.nvmlDeviceGetRemappedRows = remapped
    nv.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: throttle
    return nv


@pytest.mark.parametrize("kw, failed", [
    ({}, []),
    ({"count": 3}, ["gpus"]),
    ({"free": (80e9, 80e9, 10e9, 80e9)}, ["gpu2.memory"]),
    ({"ecc": (0, 2, 0, 0)}, ["gpu1.ecc"]),
    ({"pending": True}, [f"gpu{i}.retired_pages" for i in range(4)]),
    ({"rows": (0, 1, 1, 0)}, [f"gpu{i}.remapped_rows" for i in range(4)]),
    ({"throttle": 0x40 | 0x1}, [f"gpu{i}.clocks" for i in range(4)]),
    ({"throttle": 0x4 | 0x1}, []),  # the software power cap and idle are normal
])
def test_nvml_checks(tmp_path, monkeypatch, kw, failed):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(**kw))
    report = check_node(crit(ib_ports=()), tmp_path, "/", {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert report.gpu_source == "nvml" and report.failed == failed, report.to_json()


def test_nvml_unsupported_queries_are_notes_and_fake_roots_skip_nvml(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(rows=None))
    report = check_node(crit(ib_ports=()), tmp_path, "/", {})
    assert report.ok and any("row remapping" in n for n in report.notes)
    report = check_node(crit(), tmp_path, fake_root(tmp_path), {})
    assert report.gpu_source == "device files" and any("system root is" in n for n in report.notes)


# ----- reports, run directory, exit codes ------------------------------------------------------
def test_report_schema_and_files(tmp_path):
    report = check_node(crit(), tmp_path, fake_root(tmp_path), {"SLURMD_NODENAME": "node7"})
    report.attempt = 2
    run = RunDir(tmp_path / "run")
    path = report.write(run.health_report(2, "node7"))
    assert path == tmp_path / "run/health/attempt-2/node7.json" and run.health_dir(2) == path.parent
    data = json.loads(path.read_text())
    assert tuple(data) == SCHEMA_KEYS and all(tuple(c) == CHECK_KEYS for c in data["checks"])
    assert data["ok"] is True and data["failed"] == [] and data["criteria"] == crit().to_args()
    assert isinstance(data["wall_s"], float) and data["started"] <= time.time()
    back = read_reports(run.health_dir(2))
    assert [r.to_dict() for r in back] == [data]
    with pytest.raises(ValueError):
        run.health_report(0, "../x")


def test_exit_codes_are_distinct():
    assert protocol.HEALTH_FAILED == 4
    codes = [protocol.DONE, protocol.CLEAR_ERROR, protocol.CHECKPOINTED, protocol.HEALTH_FAILED, protocol.LOCAL_REQUEUE]
    assert len(set(codes)) == len(codes)


def _env(**kw) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    return {**env, "PYTHONPATH": str(REPO), **kw}


def _preflight(run_dir, root, *args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "hpcorch.batch.health", "preflight", "--run-dir", str(run_dir),
                           "--root", str(root), *args], env=env or _env(SLURMD_NODENAME="node1"),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_preflight_step_exit_codes_and_report(tmp_path):
    root = fake_root(tmp_path)
    env = _env(SLURMD_NODENAME="node1", SLURM_RESTART_COUNT="1", SLURM_JOB_ID="77")
    ok = _preflight(tmp_path / "run", root, *crit().to_args(), env=env)
    assert ok.returncode == 0, ok.stderr
    data = json.loads((tmp_path / "run/health/attempt-1/node1.json").read_text())
    assert data["ok"] and data["job_id"] == "77" and "one node: all-reduce not measured" in data["notes"]
    (root / "sys/class/infiniband/mlx5_0/ports/1/state").write_text("1: DOWN\n")
    bad = _preflight(tmp_path / "run", root, *crit().to_args(), env=env)
    assert bad.returncode == protocol.HEALTH_FAILED and "ib.mlx5_0/1.state" in bad.stderr
    assert json.loads((tmp_path / "run/health/attempt-1/node1.json").read_text())["failed"] == ["ib.mlx5_0/1.state"]
    wrong = _preflight(tmp_path / "run", root, "--gpus", "four")
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0 and "--gpus: expected an integer" in wrong.stderr


@pytest.mark.slow
def test_deadline_writes_what_it_has_and_exits_4(tmp_path):
    code = ("import time\nfrom hpcorch.batch.health.preflight import Deadline\nfrom hpcorch.batch.health.report import Check, NodeReport\n"
            "r = NodeReport(node='node1'); r.add(Check('gpus', True, 'ok'))\n"
            f"d = Deadline(0.5, r, __import__('pathlib').Path({str(tmp_path / 'r.json')!r})).start()\n"
            "d.phase = 'the all-reduce'\ntime.sleep(30)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == protocol.HEALTH_FAILED and time.monotonic() - start < 20
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["failed"] == ["deadline"] and "timed out after 0.5 s during the all-reduce" in data["checks"][-1]["detail"]


# ----- the all-reduce among real processes (gloo) ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group(tmp_path, roots, *args, timeout_s=60):
    """One preflight process per fake node, as srun would start them; every process is ended
    by pid, whatever happens."""
    port, procs = _free_port(), []
    try:
        for rank, root in enumerate(roots):
            env = _env(SLURM_PROCID=str(rank), SLURM_NTASKS=str(len(roots)), SLURMD_NODENAME=f"node{rank + 1}",
                       SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")
            procs.append(subprocess.Popen([sys.executable, "-m", "hpcorch.batch.health", "preflight", "--run-dir",
                                           str(tmp_path / "run"), "--root", str(root), "--addr", "127.0.0.1",
                                           "--port", str(port), *args], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        codes = [p.wait(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    reports = {r.node: r for r in read_reports(RunDir(tmp_path / "run").health_dir(0))}
    return codes, reports


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_allreduce_measures_and_floors(tmp_path):
    roots = [fake_root(tmp_path, f"n{i}") for i in range(2)]
    codes, reports = _group(tmp_path, roots, *crit(allreduce_mb=1, iterations=3).to_args())
    assert codes == [0, 0], {n: r.to_dict() for n, r in reports.items()}
    for report in reports.values():
        bw = next(c for c in report.checks if c.name == "allreduce.busbw")
        assert bw.ok and bw.value > 0 and report.peers == {"node1": True, "node2": True}
    # A floor above what gloo reaches here fails every node (the collective is shared).
    codes, reports = _group(tmp_path, roots, *crit(allreduce_mb=1, iterations=2, min_busbw_gbps=1e6).to_args())
    assert codes == [4, 4] and all(r.failed == ["allreduce.busbw"] for r in reports.values())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_allreduce_names_the_failed_node_and_skips_the_measure(tmp_path):
    roots = [fake_root(tmp_path, f"n{i}") for i in range(3)]
    (roots[1] / "dev" / "nvidia0").unlink()
    codes, reports = _group(tmp_path, roots, *crit(allreduce_mb=1, iterations=2).to_args())
    assert codes == [0, 4, 0]
    assert reports["node2"].failed == ["gpus"] and reports["node1"].ok
    assert reports["node1"].peers == {"node1": True, "node2": False, "node3": True}
    assert any("all-reduce not measured: failed local checks on node2 (gpus)" in n for n in reports["node3"].notes)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_missing_peer_fails_the_join_before_the_deadline(tmp_path):
    root = fake_root(tmp_path)
    env = _env(SLURM_PROCID="0", SLURM_NTASKS="2", SLURMD_NODENAME="node1", SLURM_JOB_ID="1")
    out = _preflight(tmp_path / "run", root, "--addr", "127.0.0.1", "--port", str(_free_port()),
                     *crit(timeout_s=8).to_args(), env=env)
    assert out.returncode == 4, out.stderr
    data = json.loads((tmp_path / "run/health/attempt-0/node1.json").read_text())
    assert data["failed"] in (["allreduce.join"], ["deadline"]) and data["wall_s"] < 15


def test_rendezvous_from_slurm_variables():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "localhost,nodex", "SLURM_JOB_ID": "123456"}
    rdv = rendezvous(env)
    assert (rdv.rank, rdv.world, rdv.addr, rdv.port) == (1, 3, "localhost", 13456)
    assert 10000 <= port_for("98765432") < 20000 and port_for("5") == port_for("5")
    assert busbw_gbps(10**9, 1.0, 2) == 1.0 and busbw_gbps(10**9, 1.0, 4) == 1.5


# ----- torch stays out of the local path -------------------------------------------------------
def test_only_the_allreduce_imports_torch(tmp_path):
    folder = REPO / "hpcorch" / "health"
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        anywhere = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
            {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any("torch" in (getattr(n, "module", None) or "") or any("torch" in a.name for a in n.names)
                       for n in top), path.name
        if path.name != "allreduce.py":
            assert not any(m.startswith("torch") for m in anywhere), path.name
    code = ("import sys, hpcorch.cli.main, hpcorch.batch.health.preflight\n"
            "from hpcorch.batch.health import check_node, Criteria\n"
            f"check_node(Criteria(gpus=0), {str(tmp_path)!r})\n"
            "assert not [m for m in sys.modules if m.startswith(('torch', 'submitit'))]\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ----- the CLI ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_health(tmp_path):
    root = fake_root(tmp_path)
    prof = tmp_path / "p.yaml"
    prof.write_text(IB_PROFILE + "health: {min_free_disk_gb: 0, min_shm_gb: 0, min_free_memory_gb: 0}\n")
    env = {"SLURMD_NODENAME": "node2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    ok = run_cli("health", "-p", prof, "--root", root, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0].startswith("ok    gpus") and "node2: healthy" in ok.stdout
    assert "note: expected GPUs: 4 (node type 'g')" in ok.stdout
    (root / "sys/class/infiniband/mlx5_1/ports/1/rate").write_text("100 Gb/sec (4X EDR)\n")
    bad = run_cli("health", "-p", prof, "--root", root, "--json", "--run-dir", tmp_path / "run", env=env)
    assert bad.returncode == 4
    assert json.loads(bad.stdout)["failed"] == ["ib.mlx5_1/1.rate"]
    assert (tmp_path / "run/health/attempt-0/node2.json").exists()
    for args, expected in ((["--root", tmp_path / "nope"], "--root: expected a directory"),
                           (["-p", tmp_path / "missing.yaml"], "no such profile file"),
                           (["-p", prof, "--root", root, "--allreduce"], "--allreduce: expected to run in a Slurm")):
        out = run_cli("health", *args, env=env)
        assert out.returncode == 2 and expected in out.stderr and out.stderr.strip().count("\n") == 0, out.stderr


# ----- the dev cluster's emulated hardware (generated files only) ------------------------------
def test_dev_cluster_task_prolog_and_node_roots(tmp_path):
    local = LocalCluster(tmp_path / "state")
    prof = load_profile("devcluster")
    assert f"TaskProlog={tmp_path}/state/etc/task_prolog.sh" in slurm_conf(prof, local)
    assert "TaskProlog" not in slurm_conf(prof)
    written = write_configs(prof, tmp_path / "state/etc", local)
    prolog = next(p for p in written if p.name == "task_prolog.sh")
    assert prolog.read_text() == task_prolog(local) and prolog.stat().st_mode & 0o777 == 0o755
    out = subprocess.run([str(prolog)], env={"SLURMD_NODENAME": "node3"}, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout == f"export HPCORCH_SYSTEM_ROOT={tmp_path}/state/nodes/node3\n"
    assert subprocess.run([str(prolog)], env={}, capture_output=True, text=True, timeout=10).stdout == ""
    # GPU files, /dev/shm and the devcluster profile's one emulated HDR port.
    root = local.node_root("node3")
    make_node_root(root, prof, "node3", mknod=_fake_mknod)
    assert sorted(p.name for p in (root / "dev").iterdir()) == ["nvidia0", "nvidia1", "nvidia2", "nvidia3", "shm"]
    assert (root / "dev/shm").resolve() == Path("/dev/shm").resolve()
    assert [p.name for p in (root / "sys/class/infiniband").iterdir()] == ["mlx5_0"]


def test_node_root_with_hcas_is_healthy_and_repaired_on_up(tmp_path):
    prof = _profile(tmp_path)
    root = tmp_path / "nodes/node1"
    make_node_root(root, prof, "node1", mknod=_fake_mknod)
    port = root / "sys/class/infiniband/mlx5_1/ports/1"
    assert (port / "state").read_text() == "4: ACTIVE\n" and (port / "phys_state").read_text() == "5: LinkUp\n"
    assert (port / "rate").read_text() == "200 Gb/sec (4X HDR)\n"
    assert check_node(for_job(prof, load_job(REPO / "jobs/gpt-tiny.yaml", ["resources.gpus_per_node=4"])),
                      tmp_path, root, {}).failed in ([], ["host.memory"], ["host.disk"])
    (port / "state").write_text("1: DOWN\n")
    (root / "dev/nvidia2").unlink()
    make_node_root(root, prof, "node1", mknod=_fake_mknod)
    assert (port / "state").read_text() == "4: ACTIVE\n" and (root / "dev/nvidia2").exists()
