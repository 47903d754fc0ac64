"""The docs cannot drift from the code.

* Every key the job and profile schemas accept (walked from the spec dataclasses, so a key added
  later is required too) has a row in the reference: a Markdown table row of docs/jobs.md or
  docs/profiles.md whose first cell holds the key's full dotted path in backticks (in a table
  whose header's first cell is ``key``); and every key such a row names is one the schema accepts. Paths are
  written as the loader reads them: ``partitions[].name`` for an item of a list,
  ``node_types.NAME.cpus`` for a mapping's entry, one path for the keys of every variant of a
  tagged choice (``launch.wrapper.image``). A section (a key whose value is a mapping of keys,
  such as ``trainer.optimizer``) is covered by its keys' rows.
* Every ``hpcorch ...`` command in a fenced code block of README.md and docs/*.md parses
  against the real click CLI: unknown commands, unknown options, missing arguments and bad
  values fail. A line holding the marker ``# placeholder`` is skipped.
* Every relative link of README.md and docs/*.md names a file that exists, and a heading of it
  when it names one (``profiles.md#extra-directives``).
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import click
import pytest

from hpcorch.spec.job import JobSpec
from hpcorch.spec.profile import ClusterProfile

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
SKIP_MARK = "# placeholder"


# ----- schema keys -----------------------------------------------------------------------------------
def _walk(tp, path: str, out: dict[str, bool]) -> bool:
    """Record every key path under ``tp``; return whether ``tp`` holds keys of its own."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):  # optional values, int | str, tagged choices of dataclasses
        has = False
        for arg in get_args(tp):
            if arg is not type(None):
                has |= _walk(arg, path, out)
        return has
    if origin in (list, tuple):
        return _walk(get_args(tp)[0], path + "[]", out)
    if origin is dict:
        return _walk(get_args(tp)[1], path + ".NAME", out)
    if origin is Literal or not dataclasses.is_dataclass(tp):
        return False
    hints = get_type_hints(tp)
    for f in dataclasses.fields(tp):
        if not f.init:
            continue
        key = f"{path}.{f.name}" if path else f.name
        section = _walk(hints[f.name], key, out)
        out[key] = out.get(key, False) or section
    return True


def schema_keys(cls) -> list[str]:
    """The key paths a user writes: every key that is not only a section of further keys."""
    out: dict[str, bool] = {}
    _walk(cls, "", out)
    return sorted(key for key, section in out.items() if not section)


def documented_keys(doc: Path) -> set[str]:
    """The backticked paths in the first cell of the rows of the doc's key tables (tables whose
    header's first cell is ``key``)."""
    keys, in_key_table, previous = set(), False, ""
    for line in doc.read_text().splitlines():
        if line.startswith("|"):
            first = line.split("|")[1]
            if not previous.startswith("|"):  # a table's header
                in_key_table = first.strip() == "key"
            elif in_key_table:
                keys.update(re.findall(r"`([^`]+)`", first))
        previous = line
    return keys


def test_the_walk_sees_nested_lists_maps_and_tagged_choices():
    jobs, profiles = schema_keys(JobSpec), schema_keys(ClusterProfile)
    assert {"name", "trainer.parallel.tp", "launch.wrapper.image", "launch.wrapper.argv", "environment"} <= set(jobs)
    assert "trainer.model" not in jobs and "trainer" not in jobs  # sections are covered by their keys
    assert {"node_types.NAME.gpus.count", "partitions[].node_groups[].nodes", "qos.NAME.max_time",
            "network.switches.spines[].switches", "login.host"} <= set(profiles)


# Keys documented ahead of the schema change that adds them (the model family); once the schema
# has them, they are checked like any other.
AHEAD = {"trainer.model.kind"}


@pytest.mark.parametrize("cls, page", [(JobSpec, "jobs.md"), (ClusterProfile, "profiles.md")])
def test_every_schema_key_is_documented(cls, page):
    missing = [key for key in schema_keys(cls) if key not in documented_keys(DOCS / page)]
    assert not missing, f"docs/{page} has no row for: {', '.join(missing)}"


@pytest.mark.parametrize("cls, page", [(JobSpec, "jobs.md"), (ClusterProfile, "profiles.md")])
def test_every_documented_key_exists(cls, page):
    """A row for a key the loader would refuse (a typo, a removed key) fails too."""
    unknown = sorted(documented_keys(DOCS / page) - set(schema_keys(cls)) - AHEAD)
    assert not unknown, f"docs/{page} documents keys the schema does not accept: {', '.join(unknown)}"


# ----- commands in the examples ----------------------------------------------------------------------
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "text"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}


def commands(text: str) -> list[str]:
    """The ``hpcorch`` command lines of the shell blocks, one per command (``a; b`` is two).

    A command line starts with ``hpcorch`` (or ``$ hpcorch``, a prompt before output), or holds
    ``$(hpcorch ...)``; output lines that mention hpcorch are not commands."""
    found = []
    for info, body in FENCE.findall(text):
        if info not in SHELL_BLOCKS:
            continue
        for line in body.splitlines():
            line = re.sub(r"^\s*\$ ", "", line)
            if SKIP_MARK in line or not (line.startswith("hpcorch ") or "$(hpcorch " in line
                                         or re.search(r"(;|&&|\|)\s*hpcorch ", line)):
                continue
            line = re.sub(r"(^|\s)#.*$", "", line)  # a trailing comment
            found += re.findall(r"\$\((hpcorch [^)]*)\)", line)  # eval "$(hpcorch devcluster env)"
            line = re.sub(r"\$\(hpcorch [^)]*\)", "X", line)
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
            lexer.whitespace_split = True
            lexer.commenters = ""
            part: list[str] = []
            parts = [part]
            try:
                for token in lexer:
                    if token in SEPARATORS:
                        part = []
                        parts.append(part)
                    else:
                        part.append(token)
            except ValueError:  # unbalanced quotes: the test of this line reports it
                found.append(line)
                continue
            found += [shlex.join(p) for p in parts if p and p[0] == "hpcorch"]
    return found


def parse(argv: list[str]) -> None:
    """Parse ``hpcorch ARGS`` as click would run it, down the chain of groups, without running it."""
    from hpcorch.cli.main import main

    cmd, ctx = main, main.make_context("hpcorch", list(argv), resilient_parsing=False)
    while isinstance(cmd, click.Group):
        protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        rest = [*protected, *ctx.args]
        if not rest:
            if cmd.invoke_without_command:  # `hpcorch nodes` lists
                return
            raise click.UsageError("Missing command.", ctx)
        name, sub, rest = cmd.resolve_command(ctx, rest)
        cmd, ctx = sub, sub.make_context(name, rest, parent=ctx, resilient_parsing=False)


def _parses(line: str) -> str | None:
    try:
        parse(shlex.split(line)[1:])
    except ValueError as exc:
        return f"not a shell command line: {exc}"
    except click.BadParameter as exc:
        # A path that must exist is the reader's own (--code ~/src/myproject): its syntax is checked.
        if isinstance(exc.param.type, click.Path) and exc.param.type.exists:
            return None
        return exc.format_message()
    except click.ClickException as exc:
        return exc.format_message()
    except click.exceptions.Exit:
        return None
    return None


def _all_commands():
    return [(page.relative_to(REPO).as_posix(), line) for page in PAGES for line in commands(page.read_text())]


def test_the_docs_show_commands():
    shown = _all_commands()
    assert len(shown) > 60
    assert ("README.md", "hpcorch submit jobs/gpt-tiny.yaml") in shown


@pytest.mark.parametrize("page, line", _all_commands())
def test_every_command_in_the_examples_parses(page, line, monkeypatch):
    monkeypatch.chdir(REPO)
    assert _parses(line) is None, f"{page}: {line}: {_parses(line)}"


def test_the_parse_fails_what_click_would_refuse():
    assert _parses("hpcorch status 3 --json") is None
    assert _parses("hpcorch status 3 --jsn") is not None  # unknown option
    assert _parses("hpcorch statos 3") is not None  # unknown command
    assert _parses("hpcorch devcluster upp") is not None  # unknown subcommand
    assert _parses("hpcorch status") is not None  # missing argument
    assert _parses("hpcorch train jobs/gpt-tiny.yaml --nproc zero") is not None  # bad value


def test_commands_are_found_in_pipes_lists_and_substitutions():
    text = ("```bash\n$ hpcorch ls; hpcorch status 7 | grep state  # a comment\n"
            'eval "$(hpcorch devcluster env)"\nhpcorch plan x  # placeholder\n```\n'
            "```yaml\nhpcorch: not a command\n```\n")
    assert commands(text) == ["hpcorch ls", "hpcorch status 7", "hpcorch devcluster env"]
    assert commands("```\nerror: hpcorch's refusal\n$ hpcorch ls\n```\n") == ["hpcorch ls"]


# ----- links -----------------------------------------------------------------------------------------
def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_links_name_files_and_headings_that_exist():
    readme = (REPO / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert linked == {f"docs/{p.name}" for p in DOCS.glob("*.md")}, "the README links to every page of docs/"
    broken = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            where = page.parent / target if target else page
            if not where.is_file():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
            elif anchor and anchor not in _anchors(where):
                broken.append(f"{page.relative_to(REPO)} -> {target}#{anchor}")
    assert not broken


def test_the_ci_command_is_the_readmes():
    """.ci/run runs the line after the marker; it must stay the full install-and-test command."""
    lines = (REPO / "README.md").read_text().splitlines()
    at = lines.index("<!-- test-command -->")
    assert lines[at + 1] == "```bash"
    command = lines[at + 2]
    # the CPU build of torch first (an unpinned torch pulls a CUDA build), then lint, then every test
    assert command.startswith("pip install torch==2.13.0 && pip install -e '.[test]' && "), command
    assert command.endswith("ruff check && python -m pytest -q"), command
