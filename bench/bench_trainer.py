"""Step time of hpcorch's trainer against a bare training loop of the same model and batch.

Both run in this process on one rank (gloo), interleaved, after warm-up; the trainer's step
includes what it does for real (data from the global sample order, DDP, the loss/stop
all-reduce, clipping, LR schedule). Usage: python bench/bench_trainer.py [--steps N] [--set K=V ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import torch

    from hpcorch.spec.job import load_job
    from hpcorch.train.distributed import init_distributed
    from hpcorch.train.models import spec_of
    from hpcorch.train.spawn import free_port
    from hpcorch.train.trainer import Trainer

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    job = load_job(REPO / "jobs/gpt-tiny.yaml", ["resources.tasks_per_node=1", *args.overrides])
    env = init_distributed()
    trainer = Trainer(job, Path(tempfile.mkdtemp()), env, stop_signals=())  # builds the model

    tr = job.trainer
    torch.manual_seed(tr.seed)
    family = spec_of(tr.model)
    bare = family.parts().build(tr.model)
    opt = torch.optim.AdamW(bare.parameters(), lr=tr.optimizer.lr)
    _, x, y = trainer.data.train.batch(range(tr.micro_batch))
    accum = trainer.accum

    def bare_step():
        for _ in range(accum):
            _, loss = bare(x, y)
            (loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for _ in range(5):
        trainer.train_step()
        bare_step()
    ours, base = [], []
    for _ in range(args.steps):
        ours.append(timed(trainer.train_step))
        base.append(timed(bare_step))
    o, b = statistics.median(ours), statistics.median(base)
    tokens = tr.global_batch * tr.model.seq_len
    print(f"model {family.shapes.num_params(tr.model) / 1e6:.2f}M params, {tokens} tokens/step, accumulation {accum}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'loop':<22}{'median step s':>14}{'tokens/s':>12}{'ratio':>8}")
    print(f"{'bare loop':<22}{b:>14.4f}{tokens / b:>12.0f}{1.0:>8.2f}")
    print(f"{'hpcorch trainer':<22}{o:>14.4f}{tokens / o:>12.0f}{o / b:>8.2f}")


if __name__ == "__main__":
    main()
