"""One rank of the planner's memory check (run by tests/test_estimate.py through subprocess).

Usage: memory_worker.py CASES_JSON OUT_DIR   (RANK, WORLD_SIZE, MASTER_* in the environment)

CASES_JSON is a list of ``{"name": ..., "sets": [KEY=VALUE, ...]}``: overrides of
jobs/gpt-tiny.yaml (its resources set to this world). For every case this rank builds the
trainer's own parallel model (:func:`hpcorch.train.parallelize.build.build_parallel_model`: the same
layouts, optimizers and precision the trainer runs), trains one warm-up step (optimizer states
exist after it, DDP has rebuilt its buckets), then measures one more step -- forward, backward,
gradient clipping, optimizer step, as :meth:`Trainer.train_step` runs them -- under torch's
``MemTracker`` (torch.distributed._tools.mem_tracker). The tracker is entered before the model
is built, so every tensor the layout keeps (parameters, DDP's buckets, FSDP2's shards, optimizer
states) is tracked; entering it again for the measured step resets its peak to what is live.
Writes OUT_DIR/NAME-RANK.json: the peak bytes of the step and the tracker's breakdown at it.
"""
import faulthandler
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed._tools.mem_tracker import MemTracker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpcorch.spec.job import load_job  # noqa: E402
from hpcorch.train.distributed import init_distributed, shutdown  # noqa: E402
from hpcorch.train.parallelize.build import build_parallel_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class _NoModules:
    """Stands in for MemTracker's ModTracker under pipeline parallelism: the ModTracker's
    backward hooks break the pipeline stages' ``torch.autograd.grad`` ("a leaf node was passed
    to _will_engine_execute_node"). Without it the tracker counts the same bytes (every op's
    outputs, through its dispatch mode), only not by module or forward/backward category."""

    is_bw = False
    parents = {"Global"}

    def register_user_hooks(self, *hooks) -> None:
        pass

    def clear_user_hooks(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args) -> None:
        pass


class StepTracker(MemTracker):
    """torch's MemTracker, which refuses a root module's second forward (its per-module
    statistics are per iteration). Every micro-batch and step runs the root again: forget the
    per-module statistics then (they are not used here); the tracked bytes are untouched.
    ``modules=False``: no module hooks (see :class:`_NoModules`)."""

    def __init__(self, modules: bool = True):
        super().__init__()
        if not modules:
            self._mod_tracker = _NoModules()

    def _pre_fw_hook(self, module, inputs) -> None:
        if module in self.memory_tracking and not self._mod_tracker.is_bw:
            parents = set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)}
            if parents <= {"Global"}:
                self.reset_mod_stats()
        super()._pre_fw_hook(module, inputs)


def step(parallel, job, gen: torch.Generator) -> None:
    """One optimizer step on random tokens, as Trainer.train_step does it."""
    tr, layout = job.trainer, parallel.layout
    shape = (layout.micro_batch, tr.model.seq_len)
    batches = [(torch.randint(tr.model.vocab, shape, generator=gen),
                torch.randint(tr.model.vocab, shape, generator=gen)) for _ in range(layout.accumulation)]
    parallel.forward_backward(batches)
    parallel.clip_grad_norm(tr.optimizer.grad_clip)
    parallel.optimizer_step()


def measure(sets: list[str], env) -> dict:
    job = load_job(REPO / "jobs" / "gpt-tiny.yaml",
                   [f"resources.tasks_per_node={env.world_size}", *sets])
    gen = torch.Generator().manual_seed(env.rank)
    tracker = StepTracker(modules=os.environ.get("HPCORCH_MEMORY_BY_MODULE") == "1")
    with tracker:
        parallel = build_parallel_model(job, env)
        parallel.train()
        tr = job.trainer
        x = torch.randint(tr.model.vocab, (tr.micro_batch, tr.model.seq_len), generator=gen)
        parallel.settle(x, x)
        step(parallel, job, gen)
    gc.collect()
    with tracker:  # entered again: the peak starts from what the layout keeps between steps
        step(parallel, job, gen)
    peak = tracker.get_tracker_snapshot("peak")
    snap = next(iter(peak.values())) if peak else {}
    out = {"peak": int(snap.get("Total", 0)), "breakdown": {str(k): int(v) for k, v in snap.items()}}
    del parallel, tracker
    gc.collect()
    return out


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[2])
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(float(os.environ.get("HPCORCH_MEMORY_WORKER_TIMEOUT", "100")), exit=True)
    env = init_distributed(timeout_s=120)
    try:
        for case in cases:
            start = time.perf_counter()
            result = measure(case["sets"], env)
            result["seconds"] = round(time.perf_counter() - start, 3)
            (out_dir / f"{case['name']}-{env.rank}.json").write_text(json.dumps(result))
            dist.barrier()
    finally:
        shutdown()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
