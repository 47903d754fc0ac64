"""The shell side of a render: the filters that make a value safe where it is written, and the
one walk of the rendered script, with the shell's quoting rules, that checks where each filtered
value landed (see :mod:`hpcorch.render.sbatch` for the whole contract).

``|q`` output is a shell word; ``|directive`` output stands only on an ``#SBATCH`` or comment line;
``|expand``/``|prepend`` output expands only ``${NAME}``. Each wraps its output in private marker
characters, which :func:`check_placement` checks and removes.
"""
from __future__ import annotations

import re
import shlex

from hpcorch.errors import RenderError
from hpcorch.spec.expand import prepend_word, shell_word
from hpcorch.spec.launch import DIRECTIVE_VALUE

_PLAIN = re.compile(r"[A-Za-z0-9_./:=,@%+-]*")
_DIRECTIVE = DIRECTIVE_VALUE  # the spec layer owns the #SBATCH alphabet
_SBATCH_LINE = re.compile(r"#SBATCH --[a-z-]+(=\S+)?")

# Private-use characters: outside every alphabet above and refused in quoted values, so only the
# filters put them into a render; check_placement removes every one of them.
Q_OPEN, Q_CLOSE, D_OPEN, D_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
E_OPEN, E_CLOSE = "\ue004", "\ue005"
_OPENERS, _CLOSERS = (Q_OPEN, D_OPEN, E_OPEN), (Q_CLOSE, D_CLOSE, E_CLOSE)
_MARKERS = "".join(_OPENERS + _CLOSERS)
_MARKED = re.compile("|".join(f"{o}[^{_MARKERS}]*{c}" for o, c in zip(_OPENERS, _CLOSERS, strict=True)))
_FILTER = {Q_OPEN: "|q", D_OPEN: "|directive", E_OPEN: "|expand"}
_HEREDOC = re.compile(f"<<(-?)[ \\t]*([^\\s;&|()<>{_MARKERS}]*)")


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


def step_options(launch) -> Safe:
    """The ``step_options`` filter: a LaunchPlan's srun options (the wrapper's own first:
    ``--uenv=``, ``--environment=``, ``--container-image=``), each ``|expand``-ed, each after a
    space. Every srun step that runs where the ranks run writes them, from this one place."""
    return Safe("".join(" " + expand(option) for option in launch.srun_options))


def step_command(launch, args) -> Safe:
    """The ``step_command`` filter: the wrapper's words (``apptainer exec ... IMAGE``, a
    command), the interpreter and ``-u -m ARGS...`` (``args``: the module and its words), for
    any srun step of the script; the same launch description for pre-flight and training."""
    if isinstance(args, str):
        raise RenderError(f"|step_command expects a list of words, got the string {args!r}")
    words = [expand(word) for word in launch.prefix] + [shell_quote(launch.python), "-u", "-m"]
    return Safe(" ".join(words + [shell_quote(word) for word in args]))


def _check_unfiltered(text: str) -> None:
    if any(mark in text for mark in _MARKERS):
        raise RenderError(f"refusing to quote a value that is already filtered: {_strip(text)!r}")


def finalize(value):
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


def check_directives(text: str) -> None:
    """Belt and braces: sbatch reads #SBATCH lines only before the first command."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#SBATCH") and not _SBATCH_LINE.fullmatch(line):
            raise RenderError(f"line {number} is not a well-formed #SBATCH directive: {line!r}")


def check_placement(text: str) -> str:
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
