"""Sharded checkpoints reshard by name: saved on one layout, loaded on another, the same model
(same digest) and optimizer state; an async save killed midway leaves the previous one latest."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from trainhelp import finish_ranks

pytestmark = pytest.mark.timeout(300)
WORKER = Path(__file__).resolve().parents[1] / "reshard_worker.py"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, ckpt: Path, world: int, timeout: float = 120) -> tuple[dict, list[int]]:
    """Run ``world`` ranks of the worker; kill them (by pid) if they outlive ``timeout``."""
    out = ckpt.parent / f"{mode}-{world}.json"
    port = _port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        env.pop("HPCORCH_CRASH_IN_SAVE", None)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), mode, str(ckpt), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = finish_ranks(procs, timeout)
    codes = [p.returncode for p in procs]
    result = json.loads(out.read_text()) if out.exists() else {"logs": logs}
    return result, codes


@pytest.fixture(scope="module")
def fsdp_saved(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("fsdp") / "ck"
    saved, codes = run("save-fsdp", ckpt, 2)
    assert codes == [0, 0], saved
    return ckpt, saved


@pytest.mark.parametrize("mode, world", [("load-single", 1), ("load-fsdp", 2), ("load-stages", 2)])
def test_fsdp_save_loads_into_other_layouts(fsdp_saved, mode, world):
    ckpt, saved = fsdp_saved
    loaded, codes = run(mode, ckpt, world)
    assert codes == [0] * world, loaded
    assert loaded == saved  # same weights digest and same optimizer state


def test_tp_save_loads_into_one_rank_and_stages(tmp_path):
    ckpt = tmp_path / "ck"
    saved, codes = run("save-tp", ckpt, 2)
    assert codes == [0, 0], saved
    for mode, world in (("load-single", 1), ("load-stages", 2)):
        loaded, codes = run(mode, ckpt, world)
        assert codes == [0] * world and loaded == saved, loaded


def test_digest_is_layout_independent(fsdp_saved, tmp_path):
    """The FSDP2 run's digest equals the digest of the same weights held whole by one rank."""
    _, saved = fsdp_saved
    single, codes = run("load-single", fsdp_saved[0], 1)
    assert codes == [0] and single["digest"] == saved["digest"]


def test_sigkill_during_an_async_save_keeps_the_previous_checkpoint(tmp_path):
    from hpcorch.state.rundir import COMMIT_MARKER
    from hpcorch.train.checkpoint.store import CheckpointStore

    ckpt = tmp_path / "ck"
    _, codes = run("async-crash", ckpt, 1)
    assert codes == [-9]  # SIGKILL, from the save thread halfway through step 2's data file
    half = list((ckpt / "step_000000002").glob("*.distcp"))
    assert half and not (ckpt / "step_000000002" / COMMIT_MARKER).exists()
    store = CheckpointStore(ckpt, 0, 1)
    assert store.committed_steps() == [1]
    step, state, local, record = store.load_latest()
    assert step == 1 and record["step"] == 1 and local == {"rng": 0} and "wte.weight" in state["model"]
    assert "head.weight" not in state["model"]
