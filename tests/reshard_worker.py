"""One rank of a resharding scenario (run by tests/test_reshard.py through subprocess).

Usage: reshard_worker.py MODE CKPT_DIR OUT_JSON   (RANK, WORLD_SIZE, MASTER_* in the environment)

MODE: ``save-fsdp`` (train one step on a 2-rank FSDP2 layout, save), ``save-tp`` (the same on a
2-rank tensor-parallel layout), ``load-single`` (1 rank, the whole model), ``load-fsdp``,
``load-stages`` (2 ranks, each holding one "pipeline stage": a part with a subset of the
blocks in a ModuleDict, canonical names), ``async-crash`` (1 rank: an async save killed midway).
Each writes {"digest": model digest, "optim": digest of the canonical optimizer tensors}.
"""
import datetime
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpcorch.train.checkpoint.checkpointer import canonical_state, checkpoint_group, model_digest  # noqa: E402
from hpcorch.train.checkpoint.store import CheckpointStore  # noqa: E402

W, V, L = 16, 32, 4


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(W, W)
        self.proj = nn.Linear(W, W)

    def forward(self, x):
        return x + self.proj(torch.relu(self.fc(x)))


class Net(nn.Module):
    """A GPT stand-in with canonical names: wte, blocks.<i>, ln_f, head (tied to wte when both
    are held). ``layers`` picks the blocks this part holds; ``first``/``last`` the ends."""

    def __init__(self, layers=range(L), first=True, last=True):
        super().__init__()
        torch.manual_seed(0)
        full = [Block() for _ in range(L)]  # same initial weights for every part
        emb, ln, head = nn.Embedding(V, W), nn.LayerNorm(W), nn.Linear(W, V, bias=False)
        if first:
            self.wte = emb
        self.blocks = nn.ModuleDict({str(i): full[i] for i in layers})
        if last:
            self.ln_f, self.head = ln, head
            if first:
                self.head.weight = self.wte.weight
            else:
                self.head.weight = nn.Parameter(emb.weight.detach().clone())

    def forward(self, idx):
        x = self.wte(idx)
        for block in self.blocks.values():
            x = block(x)
        return self.head(self.ln_f(x))


def train_one_step(net, opt):
    torch.manual_seed(1)
    idx = torch.randint(0, V, (4, 8))
    loss = net(idx).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


def optim_digest(state):
    """Digest of the full canonical optimizer tensors (plain or DTensor), gathered per tensor."""
    from torch.distributed.tensor import DTensor

    digests = {}
    for k, v in state["optim"].items():
        if isinstance(v, torch.Tensor):
            full = v.full_tensor() if isinstance(v, DTensor) else v
            digests[k] = hashlib.sha256(full.float().contiguous().numpy().tobytes()).hexdigest()
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, digests)
        for other in gathered:
            digests.update(other)
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def build(mode, rank, world):
    if mode in ("save-fsdp", "load-fsdp"):
        from torch.distributed.fsdp import fully_shard

        net = Net()
        for block in net.blocks.values():
            fully_shard(block)
        fully_shard(net)
        return [net]
    if mode == "save-tp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        net = Net()
        mesh = init_device_mesh("cpu", (world,))
        for block in net.blocks.values():
            parallelize_module(block, mesh, {"fc": ColwiseParallel(), "proj": RowwiseParallel()})
        return [net]
    if mode == "load-stages":
        half = L // 2
        return [Net(range(half), first=True, last=False) if rank == 0
                else Net(range(half, L), first=False, last=True)]
    return [Net()]


def main():
    mode, ckpt, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    parts = build(mode, rank, world)
    opts = [torch.optim.AdamW(p.parameters(), lr=0.1) for p in parts]
    group = checkpoint_group(60) if world > 1 else None
    store = CheckpointStore(ckpt, rank, world, keep=2, async_save=mode == "async-crash", group=group)
    if mode.startswith("save") or mode == "async-crash":
        train_one_step(parts[0], opts[0])
        state, _ = canonical_state(parts, opts)
        store.save(1, state, {"rng": rank}, {"step": 1})
        store.wait()
        if mode == "async-crash":
            train_one_step(parts[0], opts[0])
            os.environ["HPCORCH_CRASH_IN_SAVE"] = "2"
            store.save(2, canonical_state(parts, opts)[0], {"rng": rank}, {"step": 2})
            store.wait()  # never returns: the save thread kills the process midway
    else:
        state, maps = canonical_state(parts, opts)
        step, _, _, _ = store.load_latest(target=state)
        from hpcorch.train.checkpoint.checkpointer import Checkpointer

        ck = Checkpointer.__new__(Checkpointer)  # only its state-applying half is needed here
        ck.parts, ck.optimizers = parts, opts
        ck._apply(state, maps)
    state, _ = canonical_state(parts, opts)
    result = {"digest": model_digest(parts), "optim": optim_digest(state)}
    if rank == 0:
        out.write_text(json.dumps(result))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
