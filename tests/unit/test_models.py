"""The model seam: ``trainer.model.kind`` and the registry of families (hpcorch.train.models)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest
from conftest import run_cli

from hpcorch.errors import ConfigError
from hpcorch.spec.compat import training_config
from hpcorch.spec.job import load_job
from hpcorch.spec.model import DEFAULT_KIND, MODEL_CONFIGS, GPTConfig
from hpcorch.spec.schema import KIND_DEFAULT, build
from hpcorch.train.models import FAMILIES, get_model_spec, spec_of

TINY = """\
name: tiny
resources: {{nodes: 1, gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 1, time: "0:10:00"}}
trainer:
  model: {model}
"""


def _job(tmp_path, model: str):
    path = tmp_path / "job.yaml"
    path.write_text(TINY.format(model=model))
    return load_job(path)


def test_a_job_without_kind_is_gpt(tmp_path, repo):
    assert load_job(repo / "jobs/gpt-tiny.yaml").trainer.model.kind == "gpt"
    job = _job(tmp_path, "{layers: 3, heads: 2, width: 32}")
    assert job.trainer.model == GPTConfig(layers=3, heads=2, width=32)
    assert spec_of(job.trainer.model) is get_model_spec("gpt")


def test_gpt_is_the_default_kind(tmp_path):
    assert DEFAULT_KIND == "gpt" and GPTConfig().kind == "gpt"
    assert _job(tmp_path, "{kind: gpt, layers: 3}").trainer.model.layers == 3
    path = tmp_path / "nomodel.yaml"
    path.write_text(TINY.format(model="{}").split("trainer:")[0])
    assert load_job(path).trainer.model == GPTConfig()


@pytest.mark.parametrize("model", ["{kind: mamba}", "{kind: mamba, state: 2}", "{kind: 3}"])
def test_an_unknown_kind_is_one_line_naming_the_kinds(tmp_path, model):
    with pytest.raises(ConfigError) as info:
        _job(tmp_path, model)
    assert info.value.key == "trainer.model.kind"
    assert "'gpt', 'llama'" in info.value.message and "\n" not in str(info.value)


def test_an_unknown_kind_through_the_cli_is_one_line(tmp_path, repo):
    out = run_cli("plan", repo / "jobs/gpt-tiny.yaml", "--set", "trainer.model.kind=mamba")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if "trainer.model.kind" in line]
    assert len(lines) == 1 and "'gpt'" in lines[0], out.stderr


def test_every_config_kind_has_a_family_and_back():
    assert set(MODEL_CONFIGS) == set(FAMILIES)
    for kind, family in FAMILIES.items():
        assert family.kind == kind and family.config_cls is MODEL_CONFIGS[kind]


def test_an_unknown_kind_in_the_registry_names_the_known():
    with pytest.raises(ValueError, match="unknown model kind 'mamba'; known: gpt, llama"):
        get_model_spec("mamba")


def test_the_gpt_figures_are_the_module_s():
    """The torch-free arithmetic agrees with the module it describes."""
    cfg = GPTConfig(layers=3, heads=2, width=32, seq_len=16, vocab=64, bias=True)
    family = get_model_spec("gpt")
    module = family.parts().build(cfg)
    shapes = family.shapes
    assert sum(p.numel() for p in module.parameters()) == shapes.num_params(cfg, include_position=True)
    want = shapes.root_tensors(cfg, 1, True, True) + shapes.block_tensors(cfg, 1) * cfg.layers
    assert sorted(tuple(p.shape) for p in module.parameters()) == sorted(want)
    first, last = family.parts().tied_weights(module)
    assert first is last and family.tied == ("wte.weight", "head.weight")


def test_gpt_records_as_before_there_were_kinds(repo):
    """Old checkpoints recorded trainer.model without kind: today's GPT records the same keys."""
    recorded = training_config(load_job(repo / "jobs/gpt-tiny.yaml"))
    assert "trainer.model.kind" not in recorded and recorded["trainer.model.layers"] == 2
    # activation came later: recorded only when it is not what every older run computed
    assert "trainer.model.activation" not in recorded
    tanh = training_config(load_job(repo / "jobs/gpt-tiny.yaml", ["trainer.model.activation=gelu_tanh"]))
    assert tanh["trainer.model.activation"] == "gelu_tanh"


# ----- the schema of a choice of families (what a second family will use) -------------------
@dataclass(frozen=True)
class _Other:
    kind: Literal["other"] = "other"
    depth: int = 1


@dataclass
class _Holder:
    model: GPTConfig | _Other = field(default_factory=GPTConfig, metadata={KIND_DEFAULT: True})


def test_a_choice_of_two_families_defaults_to_the_field_s_kind():
    assert build(_Holder, {"model": {"layers": 3}}, "t").model == GPTConfig(layers=3)
    assert build(_Holder, {"model": {"kind": "other", "depth": 2}}, "t").model == _Other(depth=2)
    assert build(_Holder, {}, "t").model == GPTConfig()
    with pytest.raises(ConfigError) as info:
        build(_Holder, {"model": {"kind": "third", "depth": 2}}, "t")
    assert info.value.key == "model.kind" and "'gpt', 'other'" in info.value.message
    with pytest.raises(ConfigError) as info:  # the default family's keys, checked as its own
        build(_Holder, {"model": {"depth": 2}}, "t")
    assert info.value.key == "model.depth"
    assert [f.name for f in dataclasses.fields(GPTConfig)][0] == "kind"


def test_the_registry_and_the_plan_import_no_torch(repo):
    """``hpcorch plan`` reads the family's figures from its torch-free half."""
    code = ("import sys\nfrom hpcorch.cli.main import main\n"
            "try:\n    main(['plan', 'jobs/gpt2-124m.yaml', '-p', 'h100-ndr'])\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "from hpcorch.train.models import get_model_spec\n"
            "for kind in ('gpt', 'llama'):\n    f = get_model_spec(kind)\n"
            "    assert f.shapes.num_params(f.config_cls()) > 0\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(repo))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _loss_and_grads(kind: str, chunk: int, x, y):
    import torch

    cfg = MODEL_CONFIGS[kind](vocab=1000, seq_len=32, layers=1, heads=2, width=32)
    torch.manual_seed(0)
    model = get_model_spec(kind).parts().build(cfg, loss_chunk=chunk)
    logits, loss = model(x, y)
    loss.backward()
    return logits, loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_the_loss_in_chunks_is_the_whole_loss(kind):
    """``trainer.loss_chunk``: 3 x 32 tokens in chunks of 24 (8 positions; the last chunk
    whole positions too) give the whole loss and its gradients up to fp32 summation order
    (measured: loss within 1.4e-7 relative, every gradient within 5e-7 of its largest
    element), the same bits run after run, and no whole logits."""
    import torch

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(1000, (3, 32), generator=gen), torch.randint(1000, (3, 32), generator=gen)
    logits, whole, grads = _loss_and_grads(kind, 0, x, y)
    assert logits.shape == (3, 32, 1000)
    none, chunked, chunked_grads = _loss_and_grads(kind, 24, x, y)
    assert none is None
    assert abs(chunked.item() / whole.item() - 1) < 1e-6
    for name, grad in grads.items():
        assert (chunked_grads[name] - grad).abs().max() <= 2e-6 * grad.abs().max(), name
    _, again, again_grads = _loss_and_grads(kind, 24, x, y)
    assert torch.equal(again, chunked) and all(torch.equal(again_grads[n], g) for n, g in chunked_grads.items())
    # A micro-batch within one chunk takes the whole loss's path: the same bits as before there were chunks.
    assert torch.equal(_loss_and_grads(kind, 96, x, y)[1], whole)


def test_a_negative_loss_chunk_is_one_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(TINY.format(model="{kind: llama}") + "  loss_chunk: -1\n")
    with pytest.raises(ConfigError, match="trainer.loss_chunk.*non-negative"):
        load_job(path)
