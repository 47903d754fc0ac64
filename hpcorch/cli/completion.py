"""Shell completion for the CLI: profile names, job names and files, job refs from the registry.

Completion runs on every <TAB>, so it reads only the catalog and the registry file; it never asks
a scheduler and never imports torch or submitit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hpcorch.errors import HpcorchError

if TYPE_CHECKING:  # click.shell_completion is imported on a <TAB>, not by every command
    from click.shell_completion import CompletionItem


def _names_or_files(kind: str):
    def complete(ctx, param, incomplete: str) -> list[CompletionItem]:
        """Names found on the catalog's search path, then files (the shell completes those)."""
        from click.shell_completion import CompletionItem

        from hpcorch.spec.catalog import names

        found = [CompletionItem(n) for n in names(kind) if n.startswith(incomplete)]
        return found + [CompletionItem(incomplete, type="file")]

    return complete


complete_profiles = _names_or_files("profiles")
complete_jobs = _names_or_files("jobs")


def complete_refs(ctx, param, incomplete: str) -> list[CompletionItem]:
    """Registry numbers and job names, newest first, without asking any scheduler."""
    from click.shell_completion import CompletionItem

    from hpcorch.state.registry import Registry

    try:
        entries = Registry().all()
    except HpcorchError:
        return []
    refs = dict.fromkeys(r for e in reversed(entries) for r in (str(e.key), e.name))
    return [CompletionItem(r) for r in refs if r.startswith(incomplete)]


def script(cli, shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish) that click generates for ``cli``."""
    from click.shell_completion import get_completion_class

    return get_completion_class(shell)(cli, {}, "hpcorch", "_HPCORCH_COMPLETE").source()
