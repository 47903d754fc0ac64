"""Property tests over mutated profiles, jobs and ``--set`` strings: whatever a user writes, the
loaders, the planner and the renderer either accept it (and the resolved job reads back as
written) or raise the project's own error; never another exception, never a slow path."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcorch.errors import HpcorchError
from hpcorch.plan.plan import make_plan
from hpcorch.render.sbatch import render_sbatch
from hpcorch.spec.catalog import SHIPPED
from hpcorch.spec.job import load_job
from hpcorch.spec.profile import load_profile
from hpcorch.spec.yamlio import parse_yaml

SETTINGS = settings(max_examples=150, deadline=timedelta(seconds=1), database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Strings that once broke a loader, or that YAML reads as something other than what they look like.
TRICKY = ["2024-02-30", "0x_", "0o_", "!!int x", "!!bool maybe", "!!timestamp x", "9" * 5000,
          ".nan", "-.inf", "3e-4", "2:00:00", "*a", "&a x", "[", "{", "'", '"', "a: b", "- x",
          "--help", "h100&ndr", "$(id)", "`id`", "x\ny", "n[1-100000000]", "n[", "\x00", "\u2028",
          "UID", "PATH", "1025K", "auto", "-1", str(2**64), "~", "yes", "", " "]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(TRICKY),
    st.text(max_size=12),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(TRICKY)),
                                                  inner, max_size=3)), max_leaves=6)


def _shipped(kind: str, name: str) -> dict:
    return yaml.safe_load((SHIPPED / kind / f"{name}.yaml").read_text())


def _paths(tree, prefix=()):
    """Every key path of a parsed YAML tree (list items by index)."""
    yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, child in items:
        yield from _paths(child, prefix + (key,))


@st.composite
def mutated_tree(draw, base: dict):
    """``base`` with a few values replaced, removed or added at random key paths."""
    tree = yaml.safe_load(yaml.safe_dump(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(tree))[1:]))
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(TRICKY + ["extra"]))] = draw(values)
        if not list(_paths(tree))[1:]:
            break
    return tree


@st.composite
def mutated_text(draw, text: str):
    """``text`` with a few characters YAML treats specially inserted or deleted."""
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + draw(st.sampled_from(list(":{}[]&*!|>'\"#%@`\t\n-?,") + TRICKY)) + text[at:]
        else:
            text = text[:at] + text[at + draw(st.integers(1, 8)):]
    return text


def _dump(tree) -> str:
    try:
        return yaml.safe_dump(tree, allow_unicode=True)
    except (yaml.YAMLError, UnicodeError):
        return yaml.safe_dump(str(tree))


def _check_job(path: Path, tmp: Path, overrides=()) -> None:
    """Loading, planning and rendering end in a result or an HpcorchError, nothing else."""
    try:
        job = load_job(path, list(overrides))
        plan = make_plan(job, load_profile("h100-ndr"), run_dir=tmp / "run")
        render_sbatch(plan)
    except HpcorchError:
        return
    written = plan.run.write_job(job)
    assert load_job(written) == job


@pytest.mark.slow
@SETTINGS
@given(tree=mutated_tree(_shipped("jobs", "gpt2-124m")))
def test_mutated_job_trees(tmp_path, tree):
    path = tmp_path / "job.yaml"
    path.write_text(_dump(tree))
    _check_job(path, tmp_path)


@pytest.mark.slow
@SETTINGS
@given(text=mutated_text((SHIPPED / "jobs" / "gpt-tiny.yaml").read_text()))
def test_mutated_job_text(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text, errors="surrogatepass")
    _check_job(path, tmp_path)


@pytest.mark.slow
@SETTINGS
@given(tree=st.one_of(mutated_tree(_shipped("profiles", "h100-ndr")),
                      mutated_tree(_shipped("profiles", "a100-hdr"))))
def test_mutated_profile_trees(tmp_path, tree):
    path = tmp_path / "profile.yaml"
    path.write_text(_dump(tree))
    try:
        load_profile(path)
    except HpcorchError:
        pass


@SETTINGS
@given(text=mutated_text((SHIPPED / "profiles" / "h100-ndr.yaml").read_text()))
def test_mutated_profile_text(tmp_path, text):
    path = tmp_path / "profile.yaml"
    path.write_text(text, errors="surrogatepass")
    try:
        load_profile(path)
    except HpcorchError:
        pass


_JOB_KEYS = [".".join(map(str, p)) for p in _paths(_shipped("jobs", "gpt2-124m")) if p
             and all(isinstance(k, str) for k in p)]


@SETTINGS
@given(key=st.one_of(st.sampled_from(_JOB_KEYS), st.text(max_size=10)),
       value=st.one_of(st.sampled_from(TRICKY), st.text(max_size=20),
                       st.text(st.characters(codec=None, categories=["Cs", "Cc", "Zs", "P"]), max_size=5)))
def test_set_strings(tmp_path, key, value):
    _check_job(SHIPPED / "jobs" / "gpt2-124m.yaml", tmp_path, [f"{key}={value}"])


def test_yaml_reader_fuzzed_bytes_in_bounded_time():
    """Raw text straight into the reader: only ConfigError, whatever the bytes."""
    @SETTINGS
    @given(st.text(st.characters(codec="utf-8"), max_size=200))
    def check(text):
        try:
            parse_yaml(text, "x.yaml")
        except HpcorchError:
            pass

    check()
