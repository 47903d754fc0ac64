"""Render sbatch scripts with Jinja2, failing closed on any value that is not known safe.

Every ``{{ expression }}`` passes through :func:`_finalize`. A value is written only if it is a
number, a string of plain characters that no shell or sbatch parser treats specially, or a
string that went through the ``q`` filter (shell-quoted) or the ``directive`` filter
(validated for an ``#SBATCH`` line). Anything else stops the render, so a template author
cannot forget to quote, and no profile, job or path value can add a line or a command.

Where a filtered value lands matters too, so both filters wrap their output in private marker
characters, and the rendered script is walked once with the shell's quoting rules
(:func:`_check_placement`) before the markers are removed:

* ``|q`` output is safe only in unquoted shell context: as a word (``module load {{ m|q }}``)
  or glued to unquoted text (``export X={{ v|q }}``), or in a comment. Inside ``"..."``,
  ``'...'``, ``$'...'`` or a here-document body its quotes no longer protect it (``$(...)``
  would run), so the render stops.
* ``|directive`` output is not shell-quoted at all (``h100&ndr`` is a valid constraint), so it
  may only stand on an ``#SBATCH`` line or a comment line.
* ``|expand`` (environment values, wrapper words) and ``|prepend(NAME)`` write a word in which
  only ``${NAME}`` expands (see :func:`hpcorch.spec.launch.shell_word`): double-quoted with
  backslash, double quote, ``$`` and backtick escaped, or exactly ``|q``'s output when nothing
  expands. Like ``|q`` it is safe only in unquoted shell context, so it has its own markers and
  the same placement rule.

Templates render in Jinja's immutable sandbox: no ``__class__`` walks, no mutating container
methods, and on hpcorch's own objects (and paths) only the pure helpers in ``_TEMPLATE_METHODS``
can be called, so a dry run cannot touch the file system.

Shipped templates are reachable as ``hpcorch/NAME``; a user's ``sbatch.sh.j2`` that extends
``'sbatch.sh.j2'`` (its own name) gets ours rather than itself.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from hpcorch.errors import RenderError
from hpcorch.plan.plan import Plan
from hpcorch.spec.catalog import TEMPLATES_DIR
from hpcorch.spec.launch import DIRECTIVE_VALUE
from hpcorch.spec.expand import prepend_word, shell_word

DEFAULT_TEMPLATE = "sbatch.sh.j2"
SHIPPED_PREFIX = "hpcorch"

_PLAIN = re.compile(r"[A-Za-z0-9_./:=,@%+-]*")
_DIRECTIVE = DIRECTIVE_VALUE  # the spec layer owns the #SBATCH alphabet
_SBATCH_LINE = re.compile(r"#SBATCH --[a-z-]+(=\S+)?")

# Private-use characters: outside every alphabet above and refused in quoted values, so only the
# filters put them into a render; _check_placement removes every one of them.
Q_OPEN, Q_CLOSE, D_OPEN, D_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
E_OPEN, E_CLOSE = "\ue004", "\ue005"
_OPENERS, _CLOSERS = (Q_OPEN, D_OPEN, E_OPEN), (Q_CLOSE, D_CLOSE, E_CLOSE)
_MARKERS = "".join(_OPENERS + _CLOSERS)
_MARKED = re.compile("|".join(f"{o}[^{_MARKERS}]*{c}" for o, c in zip(_OPENERS, _CLOSERS)))
_FILTER = {Q_OPEN: "|q", D_OPEN: "|directive", E_OPEN: "|expand"}
_HEREDOC = re.compile(f"<<(-?)[ \\t]*([^\\s;&|()<>{_MARKERS}]*)")

# The only callables a template may reach on an hpcorch object: pure string builders.
_TEMPLATE_METHODS = frozenset({"batch_log", "rank_log_pattern"})
# Builtin types whose non-mutating methods (the immutable sandbox blocks the others) are harmless.
_BUILTIN_TYPES = (str, int, float, bool, tuple, list, dict, set, frozenset, type({}.keys()),
                  type({}.values()), type({}.items()), type(type.__dict__))


class Safe(str):
    """A string already quoted or validated for where it is written (markers included)."""


def shell_quote(value) -> Safe:
    """The ``q`` filter: ``value`` as one shell word, for unquoted shell context only."""
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise RenderError(f"refusing to write a value with a line break into the script: {text!r}")
    if any(mark in text for mark in _MARKERS):
        raise RenderError(f"refusing to quote a value that is already filtered: {_strip(text)!r}")
    return Safe(Q_OPEN + shlex.quote(text) + Q_CLOSE)


def directive(value) -> Safe:
    """The ``directive`` filter: ``value`` checked for an ``#SBATCH`` (or comment) line."""
    text = str(value)
    if not _DIRECTIVE.fullmatch(text):
        raise RenderError(f"refusing to write {text!r} into an #SBATCH line")
    return Safe(D_OPEN + text + D_CLOSE)


def expand(value) -> Safe:
    """The ``expand`` filter: ``value`` as one shell word in which only ``$NAME``/``${NAME}``
    expand (``$$`` is a literal ``$``); any other ``$`` stops the render. Unquoted context only."""
    text = str(value)
    _check_unfiltered(text)
    try:
        return Safe(E_OPEN + shell_word(text) + E_CLOSE)
    except ValueError as exc:
        raise RenderError(f"refusing to write {text!r}: {exc}") from None


def prepend(dirs, name) -> Safe:
    """The ``prepend`` filter: ``"DIR1:DIR2${NAME:+:$NAME}"`` for ``export NAME=...``."""
    if isinstance(dirs, str):
        raise RenderError(f"|prepend({name!r}) expects a list of folders, got the string {dirs!r}")
    for text in dirs:
        _check_unfiltered(str(text))
    try:
        return Safe(E_OPEN + prepend_word(str(name), [str(d) for d in dirs]) + E_CLOSE)
    except ValueError as exc:
        raise RenderError(f"refusing to prepend to {name!r}: {exc}") from None


def _check_unfiltered(text: str) -> None:
    if any(mark in text for mark in _MARKERS):
        raise RenderError(f"refusing to quote a value that is already filtered: {_strip(text)!r}")


def _finalize(value):
    if isinstance(value, Safe) or value is None:
        return "" if value is None else value
    if isinstance(value, bool):
        raise RenderError(f"a boolean reached the script unformatted: {value!r}")
    if isinstance(value, (int, float)):
        return value
    text = str(value)
    # fullmatch: '$' would also match before a trailing newline and let it through.
    if _PLAIN.fullmatch(text):
        return text
    raise RenderError(f"value {_strip(text)!r} reaches the script without the |q or |directive filter")


def _strip(text: str) -> str:
    return text.translate({ord(mark): None for mark in _MARKERS})


def _sandbox_class():
    """The environment class, built lazily so that importing hpcorch never imports jinja2."""
    from jinja2.runtime import BlockReference, Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class ParentBlock:
        """``super()``: the parent block's output, every expression in it already finalized."""

        def __init__(self, ref: BlockReference):
            self._ref = ref

        def __call__(self) -> Safe:
            return Safe(self._ref())

    class HpcorchContext(Context):
        def super(self, name, current):
            ref = Context.super(self, name, current)
            return ParentBlock(ref) if isinstance(ref, BlockReference) else ref

    class HpcorchSandbox(ImmutableSandboxedEnvironment):
        context_class = HpcorchContext

        def join_path(self, template: str, parent: str) -> str:
            # A user's sbatch.sh.j2 that extends 'sbatch.sh.j2' would load itself forever: a
            # template naming itself means the shipped one of that name.
            if template == parent and not template.startswith(SHIPPED_PREFIX + "/"):
                return f"{SHIPPED_PREFIX}/{template}"
            return template

        def is_safe_attribute(self, obj, attr: str, value) -> bool:
            if not super().is_safe_attribute(obj, attr, value):
                return False
            return not callable(value) or _callable_allowed(obj, attr)

    return HpcorchSandbox


def _callable_allowed(obj, attr: str) -> bool:
    """Methods a template may call: builtins' (the sandbox guards them), Jinja's own helpers
    (loop.cycle, macros) and the allow-listed hpcorch helpers; never e.g. Path.unlink or RunDir.create."""
    module = type(obj).__module__ or ""
    if type(obj) in _BUILTIN_TYPES or type(obj) is Safe or module.startswith("jinja2."):
        return True
    return module.startswith("hpcorch.") and attr in _TEMPLATE_METHODS


def _template_search(template_dir: str | Path | None) -> list[str]:
    if template_dir is None:
        return []
    if not str(template_dir) or not Path(template_dir).is_dir():
        what = "is not a folder" if Path(template_dir).exists() else "does not exist"
        raise RenderError(f"template folder {str(template_dir)!r} {what}")
    return [str(template_dir)]


def environment(template_dir: str | Path | None = None):
    """A sandboxed Jinja environment over the user's template folder, with ours as the fallback
    (and always reachable as ``hpcorch/NAME``). A missing ``template_dir`` is a RenderError."""
    import jinja2

    ours = jinja2.FileSystemLoader(str(TEMPLATES_DIR))
    # The prefix loader comes first so that a user folder holding hpcorch/ cannot shadow ours.
    loader = jinja2.ChoiceLoader([jinja2.PrefixLoader({SHIPPED_PREFIX: ours}),
                                  jinja2.FileSystemLoader(_template_search(template_dir)), ours])
    env = _sandbox_class()(
        loader=loader, undefined=jinja2.StrictUndefined, finalize=_finalize,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    env.filters["q"] = shell_quote
    env.filters["directive"] = directive
    env.filters["expand"] = expand
    env.filters["prepend"] = prepend
    return env


def render_sbatch(plan: Plan, template_dir: str | Path | None = None,
                  template: str = DEFAULT_TEMPLATE, **extra) -> str:
    """The sbatch script for ``plan``, exactly as a submit sends it."""
    import jinja2
    from jinja2.sandbox import SecurityError

    from hpcorch import __version__

    env = environment(template_dir)
    try:
        tmpl = env.get_template(template)
        text = tmpl.render(plan=plan, run=plan.run, job=plan.job, res=plan.job.resources, profile=plan.profile,
                           version=__version__, **extra)
    except SecurityError as exc:
        raise RenderError(f"template {template} is not allowed to do that: {_one_line(exc)}") from None
    except jinja2.TemplateSyntaxError as exc:
        where = f"template {exc.name or template}, line {exc.lineno}"
        raise RenderError(f"{where}: {_one_line(exc.message)}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {template}: {_one_line(exc)}") from None
    except RecursionError:
        raise RenderError(f"template {template}: templates extend or include each other in a "
                          "cycle (use 'hpcorch/NAME' for the shipped template)") from None
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        # A template is the user's code: its mistakes are one line, not a Jinja traceback.
        raise RenderError(f"template {template}: {type(exc).__name__}: {_one_line(exc)}") from None
    text = _check_placement(text)
    _check_directives(text)
    return text


def _one_line(exc: Exception) -> str:
    """Jinja's syntax errors span lines; the CLI prints one."""
    return " ".join(str(exc).split())


def _check_directives(text: str) -> None:
    """Belt and braces: sbatch reads #SBATCH lines only before the first command."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#SBATCH") and not _SBATCH_LINE.fullmatch(line):
            raise RenderError(f"line {number} is not a well-formed #SBATCH directive: {line!r}")


def _check_placement(text: str) -> str:
    """Refuse a filtered value the shell would not read as intended; return ``text`` unmarked."""
    if any(mark in _MARKED.sub("", text) for mark in _MARKERS):
        raise RenderError("the template holds hpcorch's private marker characters (U+E000-U+E005)")
    _ShellScan(text).run()
    return _strip(text)


class _ShellScan:
    """One pass over the script with bash's quoting rules, enough to tell where a marked value
    starts: unquoted, in a comment, inside '...', "..." or $'...', or in a here-document body.

    Unknown constructs err on the side of refusing: a |q value inside "$(...)" is refused
    although bash reads it unquoted there. Here-documents are recognised by an unquoted ``<<``
    and end at their delimiter line; every marked value in their body is refused (``$(...)``
    expands there whatever the quotes). Arithmetic, ``case`` patterns and ``${...}`` are not
    modelled: they do not change quoting for the filters' alphabets.
    """

    def __init__(self, text: str):
        self.text, self.i, self.state = text, 0, "plain"
        self.word_start, self.dollar, self.heredocs = True, False, []

    def run(self) -> None:
        while self.i < len(self.text):
            ch = self.text[self.i]
            if ch in _OPENERS:
                self._check_mark(ch)
            elif ch == "\n":
                self._newline()
            elif ch not in _CLOSERS:
                getattr(self, "_" + self.state)(ch)
            self.i += 1

    def _escape(self) -> None:
        """Step over the escaped character, unless it is a marker: _check_mark refuses that."""
        if self.text[self.i + 1:self.i + 2] not in _OPENERS:
            self.i += 1

    def _plain(self, ch: str) -> None:
        dollar, self.dollar = self.dollar, ch == "$"
        if ch == "\\":
            # A backslash-newline joins lines: the next line's '#' may then not start a comment.
            joins = self.text[self.i + 1:self.i + 2] == "\n"
            self._escape()
            self.word_start = self.word_start and joins
            return
        if self.text.startswith("<<<", self.i):
            self.i += 2  # a here-string is a word, not a here-document
        elif self.text.startswith("<<", self.i):
            return self._heredoc()
        elif ch == "'":
            self.state = "ansi" if dollar else "single"
        elif ch == '"':
            self.state = "double"
        elif ch == "#" and self.word_start:
            self.state = "comment"
        self.word_start = ch in " \t;&|()<>"

    def _single(self, ch: str) -> None:
        if ch == "'":
            self.state = "plain"

    def _ansi(self, ch: str) -> None:
        if ch == "\\":
            self._escape()
        elif ch == "'":
            self.state = "plain"

    def _double(self, ch: str) -> None:
        if ch == "\\":
            self._escape()
        elif ch == '"':
            self.state = "plain"

    def _comment(self, ch: str) -> None:
        pass

    def _newline(self) -> None:
        if self.state in ("plain", "comment"):
            self.state, self.word_start, self.dollar = "plain", True, False
            self._skip_heredoc_bodies()

    def _heredoc(self) -> None:
        """Note the delimiter of ``<<WORD`` / ``<<-WORD``; its body starts after this line."""
        match = _HEREDOC.match(self.text, self.i)
        delimiter = re.sub(r"['\"\\]", "", match.group(2))
        if delimiter:
            self.heredocs.append((delimiter, bool(match.group(1))))
        self.i = match.end() - 1
        self.word_start = False

    def _skip_heredoc_bodies(self) -> None:
        for delimiter, strip_tabs in self.heredocs:
            while self.i + 1 < len(self.text):
                start = self.i + 1
                end = self.text.find("\n", start)
                self.i = end = len(self.text) if end < 0 else end
                line = self.text[start:end]
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
                for mark in _OPENERS:
                    if mark in line:
                        self._refuse(start + line.index(mark), f"a {_FILTER[mark]} value is inside a "
                                     "here-document body, where $(...) in it would run")
        self.heredocs = []

    def _check_mark(self, mark: str) -> None:
        line = self.text[self.text.rfind("\n", 0, self.i) + 1:self.i]
        if line[-1:] in ("\\", "$") and self.state != "comment":
            self._refuse(self.i, f"a {_FILTER[mark]} value follows {line[-1]!r}, "
                                 "which changes how the shell reads it")
        if mark == D_OPEN and not (self.state == "comment" and line.lstrip(" \t").startswith("#")):
            self._refuse(self.i, "a |directive value may only stand on an #SBATCH or comment line "
                                 "(it is not shell-quoted)")
        where = {"single": "single quotes", "double": "double quotes",
                 "ansi": "$'...' quotes"}.get(self.state)
        if mark in (Q_OPEN, E_OPEN) and where:
            self._refuse(self.i, f"a {_FILTER[mark]} value is inside {where}, where its own quotes no longer "
                                 "protect it; write it as an unquoted word")

    def _refuse(self, at: int, message: str) -> None:
        number = self.text.count("\n", 0, at) + 1
        start = self.text.rfind("\n", 0, at) + 1
        end = self.text.find("\n", at)
        line = _strip(self.text[start:] if end < 0 else self.text[start:end])
        raise RenderError(f"line {number}: {message}: {line!r}")
