"""Render sbatch scripts with Jinja2, failing closed on any value that is not known safe.

Every ``{{ expression }}`` passes through :func:`finalize`. A value is written only if it is a
number, a string of plain characters that no shell or sbatch parser treats specially, or a
string that went through the ``q`` filter (shell-quoted) or the ``directive`` filter
(validated for an ``#SBATCH`` line). Anything else stops the render, so a template author
cannot forget to quote, and no profile, job or path value can add a line or a command.

Where a filtered value lands matters too, so both filters wrap their output in private marker
characters, and the rendered script is walked once with the shell's quoting rules
(:func:`check_placement`) before the markers are removed:

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

import functools
import re
from pathlib import Path

from hpcorch.errors import RenderError
from hpcorch.plan.plan import Plan
from hpcorch.render.shell import (
    Safe,
    check_directives,
    check_placement,
    directive,
    expand,
    finalize,
    prepend,
    shell_quote,
    step_command,
    step_options,
)
from hpcorch.spec import usercache
from hpcorch.spec.catalog import TEMPLATES_DIR

DEFAULT_TEMPLATE = "sbatch.sh.j2"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHIPPED_PREFIX = "hpcorch"

# The only callables a template may reach on an hpcorch object: pure string builders.
_TEMPLATE_METHODS = frozenset({"batch_log", "rank_log_pattern"})
# Builtin types whose non-mutating methods (the immutable sandbox blocks the others) are harmless.
_BUILTIN_TYPES = (str, int, float, bool, tuple, list, dict, set, frozenset, type({}.keys()),
                  type({}.values()), type({}.items()), type(type.__dict__))
# How templates are parsed; part of the compiled-template cache's version (see _bytecode_cache).
_ENV_OPTIONS = {"keep_trailing_newline": True, "trim_blocks": True, "lstrip_blocks": True, "autoescape": False}


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
    (and always reachable as ``hpcorch/NAME``). A missing ``template_dir`` is a RenderError.
    Without a user folder the environment is made once per process, so the shipped templates are
    compiled once (a sweep renders a script per point); a user's folder gets a fresh one each
    time (a template edited within the file system's mtime granularity is still read anew)."""
    search = tuple(_template_search(template_dir))
    return _shipped_environment() if not search else _environment(search)


@functools.lru_cache(maxsize=1)
def _shipped_environment():
    return _environment(())


def _environment(search: tuple[str, ...]):
    import jinja2

    ours = jinja2.FileSystemLoader(str(TEMPLATES_DIR))
    # The prefix loader comes first so that a user folder holding hpcorch/ cannot shadow ours.
    loader = jinja2.ChoiceLoader([jinja2.PrefixLoader({SHIPPED_PREFIX: ours}),
                                  jinja2.FileSystemLoader(list(search)), ours])
    env = _sandbox_class()(loader=loader, undefined=jinja2.StrictUndefined, finalize=finalize,
                           bytecode_cache=_bytecode_cache(), **_ENV_OPTIONS)
    env.filters["q"] = shell_quote
    env.filters["directive"] = directive
    env.filters["expand"] = expand
    env.filters["prepend"] = prepend
    env.filters["step_options"] = step_options
    env.filters["step_command"] = step_command
    return env


def _bytecode_cache():
    """Compiled templates kept across processes in ``$XDG_CACHE_HOME/hpcorch/templates-V`` (or
    ``~/.cache``): compiling the shipped template is a quarter of a cold ``submit --dry-run``.
    Jinja keys an entry by template name and file and checks it against the source's SHA-1, so
    an edited template recompiles; ``V`` covers what the key does not (this module's environment
    options, hpcorch's and Jinja's versions). Entries are written to a temporary name and renamed;
    an entry that cannot be read back, or a folder that cannot be written, only costs a compile."""
    import hashlib

    import jinja2
    from jinja2.bccache import FileSystemBytecodeCache

    from hpcorch import __version__

    class Cache(FileSystemBytecodeCache):
        def load_bytecode(self, bucket) -> None:
            try:
                super().load_bytecode(bucket)
            except Exception:  # a damaged entry (pickle, marshal, I/O): compile from the source
                bucket.reset()

        def dump_bytecode(self, bucket) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError:
                return
            usercache.maybe_prune(Path(self.directory))  # edited user templates add entries

    version = hashlib.sha1(f"{__version__} {jinja2.__version__} {_ENV_OPTIONS}".encode()).hexdigest()[:12]
    folder = usercache.folder(f"templates-{version}")
    return None if folder is None else Cache(str(folder))


def render_sbatch(plan: Plan, template_dir: str | Path | None = None,
                  template: str = DEFAULT_TEMPLATE, **extra) -> str:
    """The sbatch script for ``plan``, exactly as a submit sends it. ``array`` (an
    :class:`hpcorch.submit.array.ArrayBatch`) makes it a job array's script; ``array_task=True``
    a script one task of an array runs (a sweep point's: rank logs named ``A_i``)."""
    from hpcorch import __version__

    extra.setdefault("array", None)
    # A sweep point's script runs as one array task: its submitit job id is A_i (srun's %A_%a).
    extra.setdefault("rank_log_job", "%A_%a" if extra.pop("array_task", False) or extra["array"] else "%j")
    return render_template(template, template_dir, plan=plan, run=plan.run, job=plan.job,
                           res=plan.job.resources, profile=plan.profile, version=__version__, **extra)


def render_array_script(batch, name: str, command: list[str], log_dir: str | Path,
                        directives: list[str] = (), environment: dict[str, str] | None = None) -> str:
    """The generic array script (``hpcorch/array.sh.j2``) of ``batch`` (an
    :class:`hpcorch.submit.array.ArrayBatch`): ``directives`` (``--time=10``, ``--cpus-per-task=4``,
    each checked as any ``#SBATCH`` value), the ``--array`` line, logs ``LOG_DIR/%A_%a.out|err``,
    ``environment`` exported (values quoted), then ``command`` (each word quoted) run with
    ``HPCORCH_ARRAY_TASK`` set to the task's id."""
    from hpcorch import __version__

    for key in environment or {}:
        if not _ENV_NAME.fullmatch(key):
            raise RenderError(f"environment variable name {key!r}: expected letters, digits and _")
    if not command:
        raise RenderError("an array script needs a command to run")
    return render_template("hpcorch/array.sh.j2", array=batch, name=name, command=list(command),
                           log_dir=str(log_dir), directives=list(directives), environment=environment or {},
                           version=__version__)


def render_template(template: str, template_dir: str | Path | None = None, **context) -> str:
    """Render ``template`` in the sandbox, then check where every filtered value landed and every
    ``#SBATCH`` line; any mistake is one :class:`RenderError` line."""
    import jinja2
    from jinja2.sandbox import SecurityError

    env = environment(template_dir)
    try:
        tmpl = env.get_template(template)
        text = tmpl.render(**context)
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
    text = check_placement(text)
    check_directives(text)
    return text


def _one_line(exc: Exception) -> str:
    """Jinja's syntax errors span lines; the CLI prints one."""
    return " ".join(str(exc).split())


