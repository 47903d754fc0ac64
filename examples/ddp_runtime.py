"""examples/ddp_plain.py with hpcorch's optional helper (``hpcorch.runtime``): it catches the stop
signal, checkpoints at the step it was at (nothing recomputed), says "checkpointed, resume me"
with exit code 3, and reports its steps and checkpoints, so that ``hpcorch status``, ``plot``,
``logs`` and goodput see them as they see hpcorch's own trainer. Outside hpcorch the helper's
calls do nothing: the script still runs under plain torchrun."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from ddp_plain import finish, parse, save, setup, train_step

from hpcorch import runtime


def stop_agreed() -> bool:
    """Whether any rank was told to stop: every rank then stops at this same step."""
    flag = torch.tensor([1 if runtime.should_stop() else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def main(argv=None) -> None:
    args = parse(argv)
    args.ckpt_dir = runtime.checkpoint_dir() or args.ckpt_dir
    model, ddp, optim, start, path = setup(args)
    rank = dist.get_rank()
    tokens = 16 * dist.get_world_size()  # samples per step over all ranks
    for step in range(start + 1, args.steps + 1):
        loss = train_step(args, ddp, optim, step)
        runtime.report(step=step, loss=loss, tokens=tokens)
        stop = stop_agreed()
        if stop or step % args.ckpt_every == 0 or step == args.steps:
            if rank == 0:
                save(path, model, optim, step)
                runtime.checkpoint_committed(step, path)
            dist.barrier()
        if stop:
            if rank == 0:
                print(f"stopped at step {step} ({runtime.restart_cause()} attempt {runtime.attempt()}); "
                      f"checkpointed", flush=True)
            dist.destroy_process_group()
            runtime.exit_requeue()
    finish(model, args, rank)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
