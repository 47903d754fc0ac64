"""Render sbatch scripts with Jinja2, failing closed on any value that is not known safe.

Every ``{{ expression }}`` passes through :func:`_finalize`. A value is written only if it is a
number, a string of plain characters that no shell or sbatch parser treats specially, or a
string that went through the ``q`` filter (shell-quoted) or the ``directive`` filter
(validated for an ``#SBATCH`` line). Anything else stops the render, so a template author
cannot forget to quote, and no profile, job or path value can add a line or a command.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from .errors import RenderError
from .plan import Plan
from .spec.catalog import TEMPLATES_DIR

DEFAULT_TEMPLATE = "sbatch.sh.j2"

_PLAIN = re.compile(r"^[A-Za-z0-9_./:=,@%+-]*$")
# sbatch splits #SBATCH lines itself (no shell): forbid whitespace, quotes, '#' and control chars.
_DIRECTIVE = re.compile(r"^[A-Za-z0-9_./:=,@%+\-\[\]&|*!]+$")


class Safe(str):
    """A string already quoted or validated for where it is written."""


def shell_quote(value) -> Safe:
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise RenderError(f"refusing to write a value with a line break into the script: {text!r}")
    return Safe(shlex.quote(text))


def directive(value) -> Safe:
    text = str(value)
    if not _DIRECTIVE.match(text):
        raise RenderError(f"refusing to write {text!r} into an #SBATCH line")
    return Safe(text)


def _finalize(value):
    if isinstance(value, Safe) or value is None:
        return "" if value is None else value
    if isinstance(value, bool):
        raise RenderError(f"a boolean reached the script unformatted: {value!r}")
    if isinstance(value, (int, float)):
        return value
    text = str(value)
    if _PLAIN.match(text):
        return text
    raise RenderError(f"value {text!r} reaches the script without the |q or |directive filter")


def environment(template_dir: str | Path | None = None):
    """A Jinja environment over the user's template folder, with ours as the fallback."""
    import jinja2

    search = [str(template_dir)] if template_dir else []
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search + [str(TEMPLATES_DIR)]),
        undefined=jinja2.StrictUndefined, finalize=_finalize,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    env.filters["q"] = shell_quote
    env.filters["directive"] = directive
    return env


def render_sbatch(plan: Plan, template_dir: str | Path | None = None,
                  template: str = DEFAULT_TEMPLATE, **extra) -> str:
    """The sbatch script for ``plan``, exactly as a submit sends it."""
    import jinja2

    from . import __version__

    env = environment(template_dir)
    try:
        tmpl = env.get_template(template)
        text = tmpl.render(plan=plan, run=plan.run, job=plan.job, res=plan.job.resources, profile=plan.profile,
                           version=__version__, **extra)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {template}: {exc}") from None
    _check_directives(text)
    return text


def _check_directives(text: str) -> None:
    """Belt and braces: sbatch reads #SBATCH lines only before the first command."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#SBATCH") and not re.match(r"^#SBATCH --[a-z-]+(=\S+)?$", line):
            raise RenderError(f"line {number} is not a well-formed #SBATCH directive: {line!r}")
