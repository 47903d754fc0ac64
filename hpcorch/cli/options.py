"""Every option and argument more than one command shares, in one place, so that ``--profile``,
``--json`` and the job/ref arguments read and complete the same everywhere (as SkyPilot's
``flags.py``)."""
from __future__ import annotations

from collections.abc import Callable

import click

from hpcorch.cli.completion import complete_jobs, complete_profiles, complete_refs

PROFILE_HELP = ("Cluster profile: a name (see `hpcorch profile list`) or a path to a YAML file "
                "[default: $HPCORCH_PROFILE, else local].")
JSON_HELP = "Machine-readable output."

Decorator = Callable[[Callable], Callable]


def job_options(func):
    """Options every command that takes a job shares."""
    func = click.option("--run-dir", type=click.Path(file_okay=False),
                        help="Where the run's checkpoints, logs, metrics and summary go "
                             "[default: runs/JOB_NAME].")(func)
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a job key by dotted path, e.g. trainer.steps=50 (repeatable).")(func)
    return func


def profile_option(help: str = PROFILE_HELP, default: str | None = None, show_default: bool = False) -> Decorator:
    """``--profile/-p``: a profile's name or file, completed from the catalog; each command says
    what it does with it (and what no profile means) in ``help``."""
    return click.option("--profile", "-p", "profile_name", default=default, show_default=show_default,
                        help=help, shell_complete=complete_profiles)


def profile_argument(name: str = "profile", required: bool = True, **kwargs) -> Decorator:
    """A profile's name or file as a positional argument, completed from the catalog."""
    return click.argument(name, required=required, shell_complete=complete_profiles, **kwargs)


def job_argument(func):
    """A job file or a job name (``gpt2-124m``)."""
    return click.argument("job", type=click.Path(dir_okay=False), shell_complete=complete_jobs)(func)


def ref_argument(metavar: str | None = None) -> Decorator:
    """A job in the registry: number, Slurm job id, name or run directory, completed from the
    registry."""
    return click.argument("ref", metavar=metavar, shell_complete=complete_refs)


def json_option(help: str = JSON_HELP) -> Decorator:
    """``--json``: the command's data as JSON on stdout instead of the view for people."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def allow_config_change_option(func):
    return click.option("--allow-config-change", is_flag=True,
                        help="Continue the run directory's checkpoint under a changed training config "
                             "(learning rate, schedule length, ...); the change is recorded in its events. "
                             "A changed model, data, seed, global batch or optimizer is refused regardless.")(func)


def nccl_debug_option(func):
    # An option with an optional value: `--nccl-debug` alone means INFO.
    return click.option("--nccl-debug", "nccl_debug", is_flag=False, flag_value="INFO", default=None,
                        metavar="[LEVEL]",
                        help="Set NCCL_DEBUG (VERSION, WARN, INFO, TRACE; alone: INFO) for this submission "
                             "only; profiles may not set NCCL's debugging variables.")(func)


def force_option(func):
    """``--force`` of ``plan`` and ``submit``: a job estimated not to fit goes ahead, warned."""
    return click.option("--force", is_flag=True,
                        help="Go ahead even if the memory estimate exceeds the GPUs (a warning instead "
                             "of the refusal).")(func)


def template_option(func):
    # No click check here: render.environment refuses a missing folder or a file as one error line.
    return click.option("--template-dir", type=click.Path(),
                        help="Your own template folder; hpcorch's templates are the fallback.")(func)


def wait_option(help: str) -> Decorator:
    """``--wait/--no-wait`` of submit and resume: follow rank 0's log until the job ends."""
    return click.option("--wait/--no-wait", default=None, help=help)


def devcluster_options(func):
    """``--profile`` and ``--state-dir`` of every ``hpcorch devcluster`` command."""
    func = click.option("--state-dir", type=click.Path(file_okay=False),
                        help="Private folder for the cluster's configs, sockets, pid files, logs "
                             "[default: $HPCORCH_DEVCLUSTER_DIR or /tmp/hpcorch-devcluster].")(func)
    return profile_option("The dev cluster's profile: a name or a YAML file.", default="devcluster",
                          show_default=True)(func)
