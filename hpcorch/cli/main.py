"""The ``hpcorch`` command: a thin click layer over the Python API.

Imports stay lazy: listing, validating and dry runs must never import torch or submitit.
"""
from __future__ import annotations

import json
import sys

import click

from hpcorch import __version__
from hpcorch.cli.devcluster_commands import devcluster
from hpcorch.cli.catalog_commands import jobs
from hpcorch.cli.node_commands import nodes
from hpcorch.cli.observe_commands import manifest, plot as plot_command
from hpcorch.cli.profile_commands import profile
from hpcorch.cli.remote_commands import remote
from hpcorch.cli.completion import complete_jobs, complete_profiles, complete_refs, script
from hpcorch.errors import HpcorchError
from hpcorch.cli.health_commands import health

PROFILE_HELP = ("Cluster profile: a name (see `hpcorch profile list`) or a path to a YAML file "
                "[default: $HPCORCH_PROFILE, else local].")


class HpcorchGroup(click.Group):
    """Prints hpcorch's errors as one line on stderr and exits 2, without a traceback, and lists
    commands in the order of the workflow rather than the alphabet."""

    ORDER = ("plan", "render", "submit", "train", "ls", "status", "logs", "plot", "manifest", "cancel", "resume",
             "pull", "export", "remote", "health", "nodes", "profile", "jobs", "devcluster", "completion")

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: self.ORDER.index(n) if n in self.ORDER else len(self.ORDER))

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
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def job_options(func):
    """Options every command that takes a job shares."""
    func = click.option("--run-dir", type=click.Path(file_okay=False),
                        help="Where the run's checkpoints, logs, metrics and summary go "
                             "[default: runs/JOB_NAME].")(func)
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a job key by dotted path, e.g. trainer.steps=50 (repeatable).")(func)
    return func


def profile_option(func):
    return click.option("--profile", "-p", "profile_name", default=None, help=PROFILE_HELP,
                        shell_complete=complete_profiles)(func)


def job_argument(func):
    """A job file or a job name (``gpt2-124m``)."""
    return click.argument("job", type=click.Path(dir_okay=False), shell_complete=complete_jobs)(func)


def ref_argument(func):
    """A job in the registry: number, Slurm job id, name or run directory."""
    return click.argument("ref", shell_complete=complete_refs)(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")(func)


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


def _verbose() -> bool:
    ctx = click.get_current_context()
    return bool((ctx.find_root().obj or {}).get("verbose"))


def _echo(text: str) -> None:
    click.echo(text, nl=False)


@main.command()
@job_argument
@profile_option
@click.option("--dry-run", is_flag=True, help="Print the exact sbatch script and submit nothing.")
@click.option("--check", is_flag=True,
              help="Ask the live cluster whether it would accept the job (sbatch --test-only); submit nothing.")
@template_option
@click.option("--wait/--no-wait", default=None,
              help="Follow rank 0's log until the job ends [default: wait for local, not for Slurm].")
@click.option("--remote/--here", "remote", default=None,
              help="Submit on the profile's login node over SSH, or on this machine "
                   "[default: over SSH when the profile has login: and this machine has no sbatch].")
@click.option("--code", "code_dir", type=click.Path(exists=True, file_okay=False),
              help="With --remote: a folder synced (only changed files) to the login node; the job is "
                   "submitted from there, so relative paths in it resolve against it.")
@click.option("--accept-new", is_flag=True,
              help="With --remote: store the login node's host key if it is not known yet (as OpenSSH's "
                   "StrictHostKeyChecking=accept-new); a changed key is still refused.")
@click.option("--json", "as_json", is_flag=True, help="Print the submitted job as JSON on stdout.")
@allow_config_change_option
@nccl_debug_option
@force_option
@job_options
def submit(job, profile_name, dry_run, check, template_dir, wait, overrides, run_dir, allow_config_change=False,
           nccl_debug=None, remote=None, code_dir=None, accept_new=False, as_json=False, force=False):
    """Submit JOB (a job YAML file) to the cluster of --profile.

    With the default `local` profile the job runs here through submitit's local executor, with
    the same checkpoint and requeue behaviour as on Slurm. With a profile that has `login:`,
    from a machine without Slurm (or with --remote), the job is submitted on the login node
    over SSH and operated from here like any other.
    """
    from hpcorch import service

    plan = service.plan(job, profile_name, overrides, None if remote else run_dir, nccl_debug=nccl_debug, force=force)
    _warn(plan)
    if not dry_run and _goes_remote(plan, remote):
        done = service.submit_remote(plan, code_dir, run_dir, template_dir, allow_config_change, nccl_debug,
                                     accept_new, check=check, force=force)
        if check:
            click.echo(done)
        else:
            _report(done, wait, as_json)
        return
    if code_dir is not None:
        raise HpcorchError("--code syncs a folder to the login node: it needs --remote (or a profile with "
                           "login: on a machine without Slurm)")
    script = service.render(plan, template_dir)
    if dry_run:
        click.echo(script, nl=False)
        return
    if check:
        click.echo(service.check(plan, script))
        return
    _report(service.submit(plan, script, allow_config_change=allow_config_change, template_dir=template_dir),
            wait, as_json)


def _goes_remote(plan, remote) -> bool:
    from hpcorch.remote.ops import wanted

    return wanted(plan.profile, remote, str(plan.profile_ref or plan.profile.name))


def _warn(plan) -> None:
    """The plan's doubts on stderr, where they never mix with a script or JSON on stdout."""
    for message in plan.warnings:
        click.echo(f"warning: {message}", err=True)


def _report(submission, wait, as_json: bool = False) -> None:
    """Say what was submitted (``as_json``: also as JSON on stdout); then, if asked (by default
    for local jobs), follow it to the end."""
    from hpcorch import service

    entry = submission.entry
    click.echo(submission.describe(), err=True)
    if as_json:
        click.echo(json.dumps({"key": entry.key, "job_id": entry.job_id, "name": entry.name,
                               "profile": entry.profile, "scheduler": entry.scheduler, "run_dir": entry.run_dir,
                               "job_file": entry.job_file, "host": entry.remote_ref.host if entry.remote else None}))
    if wait if wait is not None else entry.scheduler == "local":
        state = service.wait(entry, _echo, show_submitit=_verbose())
        info = service.status(str(entry.key))
        click.echo(f"job {entry.job_id}: {state}; step {info['step']}, latest checkpoint "
                   f"{info['latest_checkpoint']}, loss {info['loss']}", err=True)
        sys.exit(0 if state == "COMPLETED" else 1)


@main.command()
@job_argument
@profile_option
@template_option
@job_options
@click.pass_context
def render(ctx, job, profile_name, template_dir, overrides, run_dir):
    """Print the sbatch script for JOB (the same as submit --dry-run)."""
    ctx.invoke(submit, job=job, profile_name=profile_name, dry_run=True, check=False,
               template_dir=template_dir, overrides=overrides, run_dir=run_dir)


@main.command()
@job_argument
@profile_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@nccl_debug_option
@force_option
@job_options
def plan(job, profile_name, as_json, overrides, run_dir, nccl_debug=None, force=False):
    """Check that JOB fits the profile and show what it will use."""
    from hpcorch import service
    from hpcorch.cli.views import table_view
    from hpcorch.plan.plan import summarize

    the_plan = service.plan(job, profile_name, overrides, run_dir, nccl_debug=nccl_debug, force=force)
    _warn(the_plan)
    summary = summarize(the_plan)
    click.echo(json.dumps(summary, indent=2)) if as_json else _table(table_view(summary))


def _table(info: dict) -> None:
    from hpcorch.util.display import cell

    width = max(map(len, info))
    for key, value in info.items():
        click.echo(f"{key:<{width}}  {cell(key, value)}")


@main.command()
@job_argument
@click.option("--nproc", "-n", type=click.IntRange(1), default=None,
              help="Rank processes on this machine [default: the job's tasks_per_node].")
@click.option("--resume-step", type=int, help="Resume from this committed step instead of the latest.")
@click.option("--peak-tflops", type=float, help="Per-rank peak TFLOP/s, to report MFU.")
@allow_config_change_option
@job_options
def train(job, nproc, resume_step, peak_tflops, overrides, run_dir, allow_config_change):
    """Train JOB here in NPROC local processes (gloo on CPU, NCCL on GPUs).

    SIGTERM, SIGINT (Ctrl-C) or SIGUSR2 make every rank checkpoint at the next step boundary
    and exit with status 3. Running the same command again resumes from the latest checkpoint.
    """
    from hpcorch import protocol, service

    code, run_path = service.train(job, nproc, overrides, run_dir, resume_step, peak_tflops,
                                   allow_config_change=allow_config_change)
    if code == protocol.CHECKPOINTED:
        click.echo(f"checkpointed; run the same command again to resume ({run_path})", err=True)
    sys.exit(code)


@main.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_jobs(as_json):
    """List submitted jobs with their states (one batched squeue/sacct call)."""
    from hpcorch import service

    from hpcorch.cli.views import jobs_lines

    rows = service.jobs()
    click.echo(json.dumps(rows, indent=2) if as_json else "\n".join(jobs_lines(rows)))


@main.command()
@ref_argument
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(ref, as_json):
    """State, restarts, latest checkpoint, last loss and tokens/s of job REF
    (a registry number, Slurm job id, job name or run directory)."""
    from hpcorch import service

    from hpcorch.cli.views import status_lines

    info = service.status(ref)
    click.echo(json.dumps(info, indent=2) if as_json else "\n".join(status_lines(info)))


@main.command()
@ref_argument
@click.option("--rank", type=click.IntRange(0), default=0, show_default=True, help="Whose log.")
@click.option("--err", "stream", flag_value="err", default="out", help="Standard error instead of output.")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing until the job ends.")
def logs(ref, rank, stream, follow_):
    """Print a rank's log of job REF."""
    from hpcorch import service

    service.logs(ref, _echo, rank=rank, stream=stream, follow=follow_, show_submitit=_verbose())


@main.command()
@ref_argument
@json_option
def cancel(ref, as_json):
    """Cancel job REF. Its ranks get SIGTERM and checkpoint first; `hpcorch resume` continues it."""
    from hpcorch import service

    said = service.cancel(ref)
    click.echo(json.dumps({"ref": ref, "result": said}) if as_json else said)


@main.command()
@ref_argument
@click.option("--exclude", help="Also exclude these nodes (a Slurm hostlist).")
@click.option("--wait/--no-wait", default=None, help="Follow rank 0's log until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the new submission as JSON on stdout.")
@allow_config_change_option
@template_option
def resume(ref, exclude, wait, allow_config_change, template_dir, as_json=False):
    """Submit job REF again from its latest checkpoint, excluding nodes that failed under it."""
    from hpcorch import service

    _report(service.resume(ref, exclude=exclude, allow_config_change=allow_config_change,
                           template_dir=template_dir), wait, as_json)


@main.command()
@ref_argument
@click.option("--to", "into", type=click.Path(file_okay=False),
              help="Into this folder [default: $HPCORCH_HOME/pulled/NUMBER-NAME].")
@json_option
def pull(ref, into, as_json):
    """Fetch remote job REF's metrics, summary, events and logs to this machine (only what
    changed since the last pull), so that status works offline."""
    import dataclasses

    from hpcorch import service

    folder, stats = service.pull(ref, into)
    if as_json:
        return click.echo(json.dumps({"folder": str(folder), **dataclasses.asdict(stats)}, indent=2))
    click.echo(f"pulled into {folder}: {stats.files_sent} files ({stats.files_appended} appended), "
               f"{stats.bytes_sent} bytes")


@main.command()
@click.argument("ref", metavar="RUN_DIR_OR_REF", shell_complete=complete_refs)
@click.option("--step", type=click.IntRange(0), default=None, help="This committed step (default: the latest).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="model.safetensors (needs the safetensors package; else a .pt is written) or FILE.pt.")
@json_option
def export(ref, step, out, as_json):
    """Write a checkpoint's model weights to one plain file for use outside hpcorch."""
    from hpcorch import service

    path = service.export(ref, out, step=step)
    click.echo(json.dumps({"path": str(path), "bytes": path.stat().st_size}) if as_json else f"wrote {path}")


for command in (jobs, profile, nodes, devcluster, health, remote, manifest, plot_command):
    main.add_command(command)


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script (profile names, job names, job refs):
    `eval "$(hpcorch completion bash)"` in ~/.bashrc."""
    click.echo(script(main, shell), nl=False)


if __name__ == "__main__":
    sys.exit(main(prog_name="hpcorch"))
