"""The planner's per-GPU memory against ``torch.cuda.max_memory_allocated`` on a CUDA machine.

For gpt2-124m and a ~350M model (GPT-2 medium's shape: 24 layers, 16 heads, width 1024), under
DDP and FSDP2, with activation checkpointing off and on (bf16, AdamW, the job's sequence length),
each rank builds the trainer's own parallel model (:func:`hpcorch.train.parallelize.build.build_parallel_model`),
trains one warm-up step, resets the peak statistics and trains one measured step. Printed per
case: the planner's estimate without the CUDA overhead (what ``max_memory_allocated`` counts),
the measured peak (the largest over ranks), the error, ``max_memory_reserved``, and the memory the
process holds outside PyTorch's allocator (device used - reserved: context, cuBLAS/NCCL
workspaces), the figure behind the profile's ``planning.cuda_overhead_gb``.

Without CUDA it says so and exits 0 (nothing to compare on CPU: tests/test_estimate.py does that
against torch's MemTracker).

Usage: PYTHONPATH=. python bench/gpu_memory.py [--nproc N] [--micro-batch B] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {"gpt2-124m": [], "gpt-350m": ["trainer.model.layers=24", "trainer.model.heads=16",
                                        "trainer.model.width=1024"]}
LAYOUTS = {"ddp": ["trainer.sharding=ddp"], "fsdp": ["trainer.sharding=fsdp"]}
AC = {"ac_off": ["trainer.activation_checkpointing=false"], "ac_on": ["trainer.activation_checkpointing=true"]}


def cases(micro: int, nproc: int) -> dict[str, list[str]]:
    base = ["resources.nodes=1", f"resources.gpus_per_node={nproc}", f"resources.tasks_per_node={nproc}",
            f"trainer.micro_batch={micro}", f"trainer.global_batch={micro * nproc}", "trainer.precision=bf16",
            "trainer.compile=false", "resources.partition=null", "resources.account=null", "resources.qos=null"]
    return {f"{m}/{lay}/{ac}": base + ms + ls + acs for m, ms in MODELS.items()
            for lay, ls in LAYOUTS.items() for ac, acs in AC.items()}


def _train_step(parallel, job, gen, device) -> None:
    """One training step of random tokens, as the trainer runs it."""
    import torch

    tr, layout = job.trainer, job.layout
    shape = (layout.micro_batch, tr.model.seq_len)
    batches = [(torch.randint(tr.model.vocab, shape, device=device, generator=gen),
                torch.randint(tr.model.vocab, shape, device=device, generator=gen))
               for _ in range(layout.accumulation)]
    parallel.forward_backward(batches)
    parallel.clip_grad_norm(tr.optimizer.grad_clip)
    parallel.optimizer_step()


def rank_main(case_file: Path, out_dir: Path) -> None:
    """One rank: every case, one warm-up and one measured step each."""
    import torch

    from hpcorch.spec.job import load_job
    from hpcorch.train.distributed import init_distributed, shutdown
    from hpcorch.train.parallelize.build import build_parallel_model

    env = init_distributed(timeout_s=300)
    try:
        for name, sets in json.loads(case_file.read_text()).items():
            job = load_job("gpt2-124m", sets)
            tr = job.trainer
            parallel = build_parallel_model(job, env)
            parallel.train()
            gen = torch.Generator(device=env.device).manual_seed(env.rank)

            x = torch.randint(tr.model.vocab, (tr.micro_batch, tr.model.seq_len), device=env.device, generator=gen)
            parallel.settle(x, x)
            _train_step(parallel, job, gen, env.device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            _train_step(parallel, job, gen, env.device)
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            reserved = torch.cuda.memory_reserved()
            record = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved(),
                      "outside_allocator": total - free - reserved, "step_s": time.perf_counter() - start}
            (out_dir / f"{name.replace('/', '_')}-{env.rank}.json").write_text(json.dumps(record))
            del parallel, x
            torch.cuda.empty_cache()
    finally:
        shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=None, help="ranks [default: the visible GPUs]")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="also write the table (and JSON) here")
    ap.add_argument("--rank-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        return rank_main(*args.rank_worker)
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device here (torch.cuda.is_available() is False); the CPU comparison "
              "with torch's MemTracker is tests/test_estimate.py")
        return
    nproc = args.nproc or torch.cuda.device_count()
    import tempfile

    from hpcorch.plan.estimate.memory import GIB, estimate_memory
    from hpcorch.spec.job import load_job

    all_cases = cases(args.micro_batch, nproc)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "cases.json").write_text(json.dumps(all_cases))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen([sys.executable, __file__, "--rank-worker", str(tmp / "cases.json"), str(tmp)],
                                  env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(r),
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                       "PYTHONPATH": str(REPO)}) for r in range(nproc)]
        try:
            codes = [p.wait(timeout=3000) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        lines = [f"{torch.cuda.get_device_name(0)}, {nproc} rank(s), micro_batch {args.micro_batch}, bf16, AdamW; "
                 "GiB; estimate without the CUDA overhead vs max_memory_allocated (largest rank)",
                 f"{'case':28} {'estimate':>9} {'measured':>9} {'error':>7} {'reserved':>9} {'outside':>8}  peak at"]
        rows = []
        for name, sets in all_cases.items():
            ranks = [json.loads(p.read_text()) for p in tmp.glob(f"{name.replace('/', '_')}-*.json")]
            if not ranks:
                lines.append(f"{name:28} (no result: rank exit codes {codes})")
                continue
            est = estimate_memory(load_job("gpt2-124m", sets), "cuda", 0)
            meas = max(r["allocated"] for r in ranks)
            row = {"case": name, "estimate": est.total, "measured": meas, "error": est.total / meas - 1,
                   "reserved": max(r["reserved"] for r in ranks),
                   "outside_allocator": max(r["outside_allocator"] for r in ranks), "phase": est.phase}
            rows.append(row)
            lines.append(f"{name:28} {est.total / GIB:9.2f} {meas / GIB:9.2f} {row['error']:+7.1%} "
                         f"{row['reserved'] / GIB:9.2f} {row['outside_allocator'] / GIB:8.2f}  {est.phase}")
        print("\n".join(lines))
        if args.out:
            args.out.write_text("\n".join(lines) + "\n\n" + json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
