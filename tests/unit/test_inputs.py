"""Hostile and malformed inputs: each class the fuzzing found ends in one clear error (exit 2),
never a traceback, a hang or a value accepted only to fail later."""
from __future__ import annotations

import re
import time

import pytest
from conftest import run_cli

from hpcorch.errors import ConfigError
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.spec.yamlio import dump_yaml, parse_yaml

JOB = "name: t\nresources: {nodes: 1}\ntrainer: {steps: 5, global_batch: 4, micro_batch: 4}\n"


def _job(tmp_path, text: str, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


def _nested(key: str, value: str) -> str:
    """YAML text setting the dotted ``key`` of a small job to ``value``, written verbatim."""
    parts = key.split(".")
    lines = [f"{'  ' * i}{part}:" for i, part in enumerate(parts[:-1])]
    return "name: t\n" + "\n".join(lines) + f"\n{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\n"


@pytest.mark.parametrize("key, value, message", [
    ("trainer.steps", "2024-02-30", "expected an integer, got '2024-02-30'"),  # no dates here
    ("trainer.steps", "0x_", "cannot read '0x_' as int"),
    ("trainer.steps", "0o_", "cannot read '0o_' as int"),
    ("trainer.steps", "!!int x", "cannot read 'x' as int"),
    ("trainer.steps", "!!timestamp 2024-01-01", "unsupported tag !!timestamp"),
    ("requeue.enabled", "!!bool maybe", "cannot read 'maybe' as bool"),
    ("description", "!!python/object/apply:os.system ['true']", "unsupported tag"),
    ("description", "!!binary aGVsbG8=", "unsupported tag !!binary"),
    ("trainer.steps", "9" * 5000, "(5002 characters) as int"),
    ("trainer.steps", "1" + "0" * 30, "at most 64 bits"),
    ("trainer.optimizer.lr", ".nan", "expected a finite number"),
])
def test_yaml_values_pyyaml_cannot_build(tmp_path, key, value, message):
    path = _job(tmp_path, _nested(key, value))
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_job(path)
    assert str(err.value).startswith(str(path))
    assert len(str(err.value)) < 300  # the echoed value is capped
    # the same value through --set names the --set, not the file
    with pytest.raises(ConfigError) as err:
        load_job(_job(tmp_path, JOB, "base.yaml"), [f"{key}={value}"])
    assert f"(--set {key})" in str(err.value)


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path = _job(tmp_path, JOB + "resources:\n  gpus_per_node: 4\n")
    with pytest.raises(ConfigError, match=r"line 4, column 1: duplicate key 'resources' \(first at line 2\)"):
        load_job(path)


def test_merge_keys_may_repeat_on_purpose(tmp_path):
    path = _job(tmp_path, "name: t\ntrainer:\n  <<: {steps: 9, global_batch: 4, micro_batch: 4}\n  steps: 5\n")
    assert load_job(path).trainer.steps == 5


def test_non_utf8_file_names_the_line_and_expected_encoding(tmp_path):
    path = _job(tmp_path, JOB.encode() + b"description: caf\xe9\n")
    at = len(JOB) + len("description: caf")
    with pytest.raises(ConfigError, match=rf"line 4: byte 0xe9 at offset {at} is not UTF-8; "
                                          "expected a UTF-8 text file"):
        load_job(path)


def test_non_utf8_byte_after_a_bom_is_named_at_its_place_in_the_file(tmp_path):
    # The BOM's 3 bytes count: the offset and line are where the bad byte is in the file.
    body = JOB.encode() + b"description: s\xff\n"
    path = _job(tmp_path, b"\xef\xbb\xbf" + body)
    at = 3 + len(body) - 2
    with pytest.raises(ConfigError, match=rf"line 4: byte 0xff at offset {at} is not UTF-8"):
        load_job(path)
    # a bad byte just after a newline: without the BOM's 3 bytes the line would be wrong too
    path = _job(tmp_path, b"\xef\xbb\xbfname: t\n\xfe: 1\n")
    with pytest.raises(ConfigError, match=r"line 2: byte 0xfe at offset 11 is not UTF-8"):
        load_job(path)


def test_bom_prefixed_utf8_file_is_read(tmp_path):
    path = _job(tmp_path, b"\xef\xbb\xbf" + JOB.encode() + "description: café\n".encode())
    job = load_job(path)
    assert job.name == "t" and job.description == "café"


@pytest.mark.parametrize("text", [
    "name: t\ntrainer: " + "[" * 1000 + "]" * 1000 + "\n",
    "name: t\ntrainer: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n",
    "name: t\ntrainer: " + "[" * 200_000 + "\n",                    # crashes libyaml's composer
])
def test_deep_nesting_is_refused_fast(tmp_path, text):
    start = time.monotonic()
    with pytest.raises(ConfigError, match="nested more than 64 levels deep"):
        load_job(_job(tmp_path, text))
    assert time.monotonic() - start < 5  # generous: a hang is what this guards against


def test_alias_bomb_is_refused_before_expansion(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(ConfigError, match="values once aliases are expanded"):
        load_job(_job(tmp_path, "\n".join(lines) + "\nname: t\n"))


def test_oversized_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="larger than"):
        load_job(_job(tmp_path, JOB + "description: '" + "x" * (1 << 20) + "'\n"))


def test_resolved_job_reads_back_as_written(tmp_path):
    """A name YAML would read as a number ("3e-4") must stay a string in RUN_DIR/job.yaml."""
    from hpcorch.state.rundir import RunDir

    for text in ("3e-4", "0x10", "1_000", "2024-01-01", "yes", "null", "1e5", "1.5"):
        job = load_job(_job(tmp_path, JOB), [f"name='{text}'", f"description='{text}:2:00:00 #'"])
        again = load_job(RunDir(tmp_path / f"run-{text}").write_job(job))
        assert again.name == text and again == job


def test_dump_and_parse_agree_on_every_scalar_rule():
    data = {"a": "3e-4", "b": 3e-4, "c": "2:00:00", "d": "0o17", "e": 15, "f": ".inf", "g": True,
            "h": "on", "i": None, "j": "~", "k": "é", "l": [1, "1"]}
    assert parse_yaml(dump_yaml(data), "x") == data


@pytest.mark.parametrize("override, message", [
    ("trainer.seed=-1", "expected 0 <= seed < 2\\*\\*64"),
    ("trainer.seed=18446744073709551616", "at most 64 bits|seed"),
    ("trainer.optimizer.lr=.nan", "finite"),
    ("trainer.optimizer.lr=.inf", "finite"),
    ("environment.UID=1", "set by the shell, Slurm or hpcorch"),
    ("environment.SHELLOPTS=x", "set by the shell"),
    ("environment.PATH=/bin", "set by the shell"),
    ("environment.SLURM_JOB_ID=1", "set by the shell"),
    ("resources.mem=1025K", "whole megabytes"),
    ("description=caf\udce9", "lone surrogate"),  # what Python makes of a non-UTF-8 argv byte
    ("trainer.stpes=5", "did you mean 'steps'"),
    ("trainer.optimizer.betas=[.nan, 0.5]", r"\(--set trainer.optimizer.betas\): trainer.optimizer.betas\[0\]: expected a finite"),
    # a kind that is a list or mapping was a TypeError (unhashable) in the tagged choice
    ("trainer.model.kind=[1]", r"trainer.model.kind: expected one of 'gpt', 'llama', got \[1\]"),
    ("launch.wrapper={kind: {a: 1}}", r"launch.wrapper.kind: expected one of .*, got \{'a': 1\}"),
])
def test_values_accepted_before_then_failing_later(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_job(_job(tmp_path, JOB), [override])


def test_seed_at_the_top_of_the_range_is_usable(tmp_path):
    from hpcorch.train.determinism import fresh_rank_seed, seed_everything

    job = load_job(_job(tmp_path, JOB), ["trainer.seed=18446744073709551615"])
    seed_everything(job.trainer.seed)
    seed_everything(fresh_rank_seed(job.trainer.seed, rank=7, step=10**6))


def _profile(**node_type) -> str:
    nt = ", ".join(f"{k}: {v}" for k, v in ({"cpus": 4, "memory_mb": 1000} | node_type).items())
    return (f"name: p\nscheduler: slurm\nnode_types: {{n: {{{nt}}}}}\n"
            "partitions: [{name: q, nodes: 'n[1-2]', node_type: n}]\n")


def test_auto_sizes_only_in_local_profiles(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(_profile(cpus="auto"))
    with pytest.raises(ConfigError, match=r"node_types.n.cpus: expected a number: 'auto' describes this machine"):
        load_profile(path)
    path.write_text(_profile().replace("slurm", "local").replace("4,", "auto,"))
    assert load_profile(path).node_types["n"].cpus >= 1


def test_module_names_cannot_be_options(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(_profile() + "environment: {modules: ['--help']}\n")
    with pytest.raises(ConfigError, match=r"environment.modules\[0\]: expected a module name"):
        load_profile(path)


@pytest.mark.slow
def test_cli_prints_one_line_for_each_class(tmp_path):
    bad = [_job(tmp_path, JOB + "trainer: {}\n", "dup.yaml"),
           _job(tmp_path, b"name: \xff\n", "latin.yaml"),
           _job(tmp_path, "name: t\nx: " + "[" * 5000 + "\n", "deep.yaml"),
           _job(tmp_path, "name: !!int x\n", "tag.yaml")]
    for path in bad:
        result = run_cli("plan", path, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}"), result.stderr
        assert "Traceback" not in result.stderr
    result = run_cli("plan", _job(tmp_path, JOB, "ok.yaml"), "--set", "trainer.steps=!!int x", timeout=60)
    assert result.returncode == 2 and "(--set trainer.steps)" in result.stderr, result.stderr


def test_profile_run_root_places_run_directories(tmp_path, monkeypatch):
    from hpcorch.plan.plan import make_plan

    path = tmp_path / "p.yaml"
    job = load_job(_job(tmp_path, JOB))
    path.write_text(_profile() + "defaults: {run_root: '$SCRATCH_X/${USER}/runs'}\n")
    monkeypatch.setenv("SCRATCH_X", str(tmp_path / "scratch"))
    monkeypatch.setenv("USER", "ada")
    assert make_plan(job, load_profile(path)).run_dir == tmp_path / "scratch" / "ada" / "runs" / "t"
    assert make_plan(job, load_profile(path), run_dir=tmp_path / "mine").run_dir == tmp_path / "mine"
    monkeypatch.delenv("SCRATCH_X")
    with pytest.raises(ConfigError, match=r"defaults.run_root: '\$SCRATCH_X/\$\{USER\}/runs' names an unset"):
        make_plan(job, load_profile(path))
    path.write_text(_profile() + "defaults: {run_root: '/scratch/$(id)'}\n")
    with pytest.raises(ConfigError, match="defaults.run_root: expected a path"):
        load_profile(path)
