"""A plain PyTorch DDP training script that knows only torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and keeps its own checkpoints. It runs unchanged under
``torchrun --nproc-per-node 2 ddp_plain.py`` and as an hpcorch ``program:`` job
(examples/ddp_plain.yaml): hpcorch sets the same variables, and when the job is preempted this
script is killed by the stop signal (it does not catch it), requeued, and resumes from its last
checkpoint to the same final weights as a run that was never interrupted.

Deterministic on CPU: the weights are seeded, and each step's batch depends only on (seed,
step, rank), so a resumed run trains exactly the steps an uninterrupted one would.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

import torch
import torch.distributed as dist
from torch import nn


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--ckpt-dir", default="checkpoints")
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step (to watch it)")
    return p.parse_args(argv)


def build(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 1))


def batch(seed: int, step: int, rank: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's batch of ``step``: the same whatever came before (so a resume repeats it)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.randn(size, 32, generator=g)
    return x, x[:, :4].sum(dim=1, keepdim=True).sin()


def load(path: str, model: nn.Module, optim: torch.optim.Optimizer) -> int:
    """The step of the checkpoint at ``path`` (0 without one), its state loaded."""
    if not os.path.exists(path):
        return 0
    state = torch.load(path, map_location="cpu")
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    return state["step"]


def save(path: str, model: nn.Module, optim: torch.optim.Optimizer, step: int) -> None:
    """Write the checkpoint so that a kill at any moment leaves the old one or the new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def setup(args) -> tuple[nn.Module, nn.parallel.DistributedDataParallel, torch.optim.Optimizer, int, str]:
    """Join the group (env://: torchrun's variables), build, and resume from our checkpoint."""
    dist.init_process_group("gloo", init_method="env://")
    model = build(args.seed)
    ddp = nn.parallel.DistributedDataParallel(model)
    optim = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    path = os.path.join(args.ckpt_dir, "latest.pt")
    start = load(path, model, optim)
    # DDP all-reduces its first backward in buckets of another layout than the later ones, so
    # another summation order: one zero-gradient backward first makes a resumed process's first
    # step sum as an uninterrupted run's does (bit for bit; see hpcorch/train/determinism.py).
    (ddp(torch.zeros(1, 32)).sum() * 0).backward()
    optim.zero_grad(set_to_none=True)
    return model, ddp, optim, start, path


def train_step(args, ddp, optim, step: int) -> float:
    x, y = batch(args.seed, step, dist.get_rank())
    optim.zero_grad()
    loss = nn.functional.mse_loss(ddp(x), y)
    loss.backward()
    optim.step()
    if args.step_sleep:
        time.sleep(args.step_sleep)
    return loss.item()


def finish(model, args, rank: int) -> None:
    if rank == 0:
        digest = weights_sha256(model)
        with open(os.path.join(args.ckpt_dir, "final.sha256"), "w") as f:
            f.write(digest + "\n")
        print(f"done: step {args.steps}, weights {digest}", flush=True)
    dist.destroy_process_group()


def main(argv=None) -> None:
    args = parse(argv)
    model, ddp, optim, start, path = setup(args)
    rank = dist.get_rank()
    if rank == 0:
        print(f"world {dist.get_world_size()}, resuming at step {start}" if start else
              f"world {dist.get_world_size()}, starting", flush=True)
    for step in range(start + 1, args.steps + 1):
        loss = train_step(args, ddp, optim, step)
        if step % args.ckpt_every == 0 or step == args.steps:
            if rank == 0:  # DDP keeps the replicas equal: one copy is the checkpoint
                save(path, model, optim, step)
            dist.barrier()  # nobody goes on before it is on disk
        if rank == 0 and step % 10 == 0:
            print(f"step {step} loss {loss:.5f}", flush=True)
    finish(model, args, rank)


if __name__ == "__main__":
    main()
