"""The Llama family on CPU: step time against a GPT of equal parameter count and torchtitan's
Llama on the same config, the cost of the loss in chunks, and its memory before and after.

Step times: one process, one thread, the same batch (llama-tiny's: 8 x 128 tokens), forward +
backward + AdamW, the models interleaved step by step after warm-up; medians, ratios against
hpcorch's llama-tiny measured in the same run. The GPT is the one of llama-tiny's depth, heads,
sequence and vocabulary whose width makes its parameter count closest. torchtitan's
``Llama3Model`` (``pip install torchtitan`` and its imports: spmd_types, torch_checkpointing,
tyro, docstring_parser, einops, triton) is built with the same shapes, unfused q/k/v, SDPA
attention and theta; skipped with the reason when it does not import.

Memory (``--memory``): torch's MemTracker peak of one training step (tests/memory_worker.py, the
trainer's own code) and the planner's estimate, for a Llama-tiny-ish shape (4 layers, width 64,
4 or 8 x 64 tokens) with a 32k and a 128k vocabulary, the loss whole (``loss_chunk=0``) and in
chunks of 64 tokens.

Usage: python bench/bench_llama.py [--steps N] [--memory]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def titan_llama(cfg):
    """torchtitan's Llama3Model of ``cfg``'s shapes (a LlamaConfig), or the reason it cannot be built."""
    try:
        from torchtitan.models.common import CosSinRoPE, Embedding, Linear, RMSNorm
        from torchtitan.models.common.attention import ScaledDotProductAttention
        from torchtitan.models.common.config_utils import make_ffn_config, make_gqa_config
        from torchtitan.models.llama3 import _LINEAR_INIT, _NORM_INIT, Llama3Model, Llama3TransformerBlock
    except Exception as exc:  # noqa: BLE001 - any import failure is the reason to print
        return None, f"{type(exc).__name__}: {exc}"
    import torch

    norm = RMSNorm.Config(normalized_shape=cfg.width, eps=cfg.norm_eps, param_init=_NORM_INIT)
    rope = CosSinRoPE.Config(dim=cfg.width // cfg.heads, max_seq_len=cfg.seq_len, theta=cfg.rope_theta)
    layers = [Llama3TransformerBlock.Config(
        attention_norm=norm, ffn_norm=norm,
        attention=make_gqa_config(dim=cfg.width, n_heads=cfg.heads, n_kv_heads=cfg.kv_heads,
                                  wqkv_param_init=_LINEAR_INIT, wo_param_init=_LINEAR_INIT,
                                  inner_attention=ScaledDotProductAttention.Config(),
                                  rope=rope, fuse_qkv=False),
        feed_forward=make_ffn_config(dim=cfg.width, hidden_dim=cfg.intermediate, w1_param_init=_LINEAR_INIT,
                                     w2w3_param_init=_LINEAR_INIT)) for _ in range(cfg.layers)]
    config = Llama3Model.Config(
        dim=cfg.width, vocab_size=cfg.vocab, norm=norm, layers=layers,
        tok_embeddings=Embedding.Config(num_embeddings=cfg.vocab, embedding_dim=cfg.width, param_init=_LINEAR_INIT),
        lm_head=Linear.Config(in_features=cfg.width, out_features=cfg.vocab, param_init=_LINEAR_INIT))
    try:
        model = config.build()
        model.init_states(buffer_device=torch.device("cpu"))
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {exc}"
    return model, None


def equal_gpt(llama_cfg, target: int):
    """The GPT of the Llama's depth, heads, sequence and vocabulary closest to ``target`` parameters."""
    from hpcorch.spec.model import GPTConfig
    from hpcorch.train.models import get_model_spec

    shapes = get_model_spec("gpt").shapes
    widths = range(llama_cfg.heads * 2, 4 * llama_cfg.width, llama_cfg.heads * 2)
    cfgs = [GPTConfig(layers=llama_cfg.layers, heads=llama_cfg.heads, width=w, seq_len=llama_cfg.seq_len,
                      vocab=llama_cfg.vocab) for w in widths]
    return min(cfgs, key=lambda c: abs(shapes.num_params(c) - target))


def step_times(steps: int) -> None:
    import torch
    import torch.nn.functional as F

    from hpcorch.spec.job import load_job
    from hpcorch.train.models import get_model_spec

    torch.set_num_threads(1)
    job = load_job(REPO / "jobs/llama-tiny.yaml")
    cfg, B = job.trainer.model, job.trainer.micro_batch
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randint(cfg.vocab, (B, cfg.seq_len), generator=gen) for _ in range(2))
    llama = get_model_spec("llama")
    n_llama = llama.shapes.num_params(cfg)
    gcfg = equal_gpt(cfg, n_llama)
    big = cfg.__class__(**{**vars(cfg), "vocab": 32768})
    runs = {}  # name -> (model, loss of a step, parameters)

    def ours(model):
        return lambda: model(x, y)[1]

    torch.manual_seed(0)
    runs["hpcorch llama-tiny"] = ours(m := llama.parts().build(cfg)), m, n_llama
    runs[f"hpcorch gpt (width {gcfg.width})"] = ours(m := get_model_spec("gpt").parts().build(gcfg)), m, \
        get_model_spec("gpt").shapes.num_params(gcfg)
    titan, why = titan_llama(cfg)
    if titan is not None:
        runs["torchtitan Llama3Model"] = (lambda: F.cross_entropy(titan(x).float().flatten(0, 1), y.flatten())), \
            titan, sum(p.numel() for p in titan.parameters())
    yb = torch.randint(32768, (B, cfg.seq_len), generator=gen)
    for name, chunk in (("llama-tiny, 32k vocab, loss whole", 0), ("llama-tiny, 32k vocab, loss_chunk 128", 128)):
        m = llama.parts().build(big, loss_chunk=chunk)
        runs[name] = (lambda m=m: m(x, yb)[1]), m, llama.shapes.num_params(big)
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (_, m, _) in runs.items()}

    def step(name):
        loss_fn = runs[name][0]
        start = time.perf_counter()
        loss_fn().backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for _ in range(3):
        for name in runs:
            step(name)
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name in runs:
            times[name].append(step(name))
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["hpcorch llama-tiny"]
    print(f"batch {B} x {cfg.seq_len} tokens, torch {torch.__version__}, 1 thread, {steps} steps, medians")
    print(f"{'model':<40}{'params':>10}{'step s':>10}{'ratio':>8}")
    for name, (_, _, n) in runs.items():
        print(f"{name:<40}{n:>10,}{med[name]:>10.4f}{med[name] / base:>8.2f}")
    if titan is None:
        print(f"torchtitan Llama3Model: not run ({why})")
    whole, chunked = med["llama-tiny, 32k vocab, loss whole"], med["llama-tiny, 32k vocab, loss_chunk 128"]
    print(f"loss in chunks / whole (32k vocab): {chunked / whole:.2f}")


def memory() -> None:
    from hpcorch.plan.estimate.memory import estimate_memory
    from hpcorch.spec.job import load_job
    from hpcorch.train.spawn import free_port

    shape = ["trainer.model.kind=llama", "trainer.model.layers=4", "trainer.model.heads=4", "trainer.model.kv_heads=2",
             "trainer.model.width=64", "trainer.model.seq_len=64"]
    cases = [{"name": f"v{v // 1024}k-mb{b}-{'whole' if c == 0 else f'chunks-of-{c}'}",
              "sets": [*shape, f"trainer.model.vocab={v}", f"trainer.loss_chunk={c}", f"trainer.micro_batch={b}",
                       f"trainer.global_batch={b}"]}
             for v, b in ((32768, 4), (32768, 8), (131072, 4)) for c in (0, 64)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cases.json").write_text(json.dumps(cases))
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO), "HPCORCH_MEMORY_WORKER_TIMEOUT": "600"}
        subprocess.run([sys.executable, str(REPO / "tests/memory_worker.py"), str(Path(tmp) / "cases.json"), tmp],
                       env=env, check=True, timeout=900)
        print("one training step, 4 layers x width 64, micro-batch (mb) x 64 tokens, fp32 (CPU); MiB")
        print(f"{'case':<22}{'measured':>10}{'planner':>10}{'error':>8}{'vs whole':>10}")
        whole = {}
        for case in cases:
            peak = json.loads((Path(tmp) / f"{case['name']}-0.json").read_text())["peak"]
            est = estimate_memory(load_job(REPO / "jobs/gpt-tiny.yaml", ["resources.tasks_per_node=1", *case["sets"]]),
                                  "cpu").total
            vocab = case["name"].rsplit("-", 1)[0].removesuffix("-chunks-of")
            whole.setdefault(vocab, peak)
            print(f"{case['name']:<22}{peak / 2**20:>10.1f}{est / 2**20:>10.1f}{est / peak - 1:>+8.1%}"
                  f"{peak / whole[vocab]:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--memory", action="store_true", help="the memory figures instead of step times")
    args = parser.parse_args()
    memory() if args.memory else step_times(args.steps)


if __name__ == "__main__":
    main()
