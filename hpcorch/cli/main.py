"""The ``hpcorch`` command: the group, its error handling and the wiring of the command modules
(``<area>_commands.py``), each a thin click layer over :mod:`hpcorch.service`.

Imports stay lazy: listing, validating and dry runs must never import torch or submitit.
"""
from __future__ import annotations

import importlib
import sys

import click

from hpcorch.spec import classcache

# Before any hpcorch module defines its dataclasses. Only the CLI, a short process run again and
# again on a login node: ranks on compute nodes never read or write the user's home cache.
classcache.install()

from hpcorch import __version__  # noqa: E402
from hpcorch.cli import job_commands  # noqa: E402
from hpcorch.cli.completion import script  # noqa: E402
from hpcorch.errors import HpcorchError  # noqa: E402

# Commands whose module is imported only when the command is looked up (run, listed in --help,
# completed): a cold `submit --dry-run` does not pay for the other command modules.
LAZY_COMMANDS = {
    "sweep": "hpcorch.cli.sweep_commands:sweep",
    "jobs": "hpcorch.cli.catalog_commands:jobs",
    "data": "hpcorch.cli.data_commands:data",
    "profile": "hpcorch.cli.profile_commands:profile",
    "nodes": "hpcorch.cli.node_commands:nodes",
    "devcluster": "hpcorch.cli.devcluster_commands:devcluster",
    "health": "hpcorch.cli.health_commands:health",
    "remote": "hpcorch.cli.remote_commands:remote",
    "manifest": "hpcorch.cli.observe_commands:manifest",
    "plot": "hpcorch.cli.observe_commands:plot",
}


class HpcorchGroup(click.Group):
    """Prints hpcorch's errors as one line on stderr and exits 2, without a traceback, and lists
    commands in the order of the workflow rather than the alphabet."""

    ORDER = ("plan", "render", "submit", "sweep", "train", "ls", "status", "logs", "plot", "manifest", "cancel",
             "resume", "pull", "export", "remote", "health", "nodes", "profile", "jobs", "devcluster", "completion")

    def list_commands(self, ctx):
        names = set(super().list_commands(ctx)) | set(LAZY_COMMANDS)
        return sorted(names, key=lambda n: (self.ORDER.index(n) if n in self.ORDER else len(self.ORDER), n))

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in LAZY_COMMANDS:
            # An unknown name: click suggests close matches among the loaded commands, so load all.
            for name in LAZY_COMMANDS:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        # click cuts each one-liner at ~45 characters; wrapping keeps the whole sentence.
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=300))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HpcorchError as exc:
            for line in str(exc).splitlines() or [""]:  # several independent errors: one line each
                click.echo(f"error: {line}", err=True)
            ctx.exit(exc.exit_code)


EXAMPLES = """Examples:

\b
  hpcorch plan gpt2-124m -p h100-ndr            does it fit? what will it use?
  hpcorch submit gpt2-124m -p h100-ndr --dry-run   the exact sbatch script
  hpcorch submit gpt2-124m -p h100-ndr          submit, then walk away
  hpcorch ls                                    every job and its state
  hpcorch logs 3 -f                             follow rank 0's log of job 3
  hpcorch resume 3 --exclude gpu017             again from the last checkpoint
"""


@click.group(cls=HpcorchGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXAMPLES)
@click.version_option(__version__, prog_name="hpcorch")
@click.option("-v", "--verbose", count=True,
              help="More detail: -v shows hpcorch's and submitit's progress lines, -vv debug output.")
@click.pass_context
def main(ctx, verbose):
    """Train Transformer language models on Slurm clusters: describe the cluster and the job
    once, see exactly what will be submitted, submit, and resume after any interruption."""
    ctx.obj = {"verbose": verbose}
    _setup_logging(verbose)


def _setup_logging(verbose: int) -> None:
    """Warnings only by default; -v: hpcorch's and submitit's INFO lines; -vv: DEBUG.
    (submitit's logger follows hpcorch's level once submitit is imported, at submission.)"""
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for command in job_commands.COMMANDS:
    main.add_command(command)


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script (profile names, job names, job refs):
    `eval "$(hpcorch completion bash)"` in ~/.bashrc."""
    click.echo(script(main, shell), nl=False)


if __name__ == "__main__":
    sys.exit(main(prog_name="hpcorch"))
