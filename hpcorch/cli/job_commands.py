"""The job lifecycle commands: plan, render, submit, train, ls, status, logs, cancel, resume,
pull and export, each a thin click layer over :mod:`hpcorch.service`.

Imports stay lazy: listing, validating and dry runs must never import torch or submitit.
"""
from __future__ import annotations

import json
import sys

import click

from hpcorch.cli.options import (
    allow_config_change_option,
    force_option,
    job_argument,
    job_options,
    json_option,
    nccl_debug_option,
    profile_option,
    ref_argument,
    template_option,
    wait_option,
)
from hpcorch.errors import HpcorchError

STDOUT_JSON_HELP = "Machine-readable output on stdout."


def _verbose() -> bool:
    ctx = click.get_current_context()
    return bool((ctx.find_root().obj or {}).get("verbose"))


def _echo(text: str) -> None:
    click.echo(text, nl=False)


@click.command()
@job_argument
@profile_option()
@click.option("--dry-run", is_flag=True, help="Print the exact sbatch script and submit nothing.")
@click.option("--check", is_flag=True,
              help="Ask the live cluster whether it would accept the job (sbatch --test-only); submit nothing.")
@template_option
@wait_option("Follow rank 0's log until the job ends [default: wait for local, not for Slurm].")
@click.option("--remote/--here", "remote", default=None,
              help="Submit on the profile's login node over SSH, or on this machine "
                   "[default: over SSH when the profile has login: and this machine has no sbatch].")
@click.option("--code", "code_dir", type=click.Path(exists=True, file_okay=False),
              help="With --remote: a folder synced (only changed files) to the login node; the job is "
                   "submitted from there, so relative paths in it resolve against it.")
@click.option("--accept-new", is_flag=True,
              help="With --remote: store the login node's host key if it is not known yet (as OpenSSH's "
                   "StrictHostKeyChecking=accept-new); a changed key is still refused.")
@json_option("Print the submitted job as JSON on stdout.")
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

    plan = service.plan(job, profile_name, overrides, None if remote else run_dir, nccl_debug=nccl_debug, force=force,
                        code_root=code_dir)
    going = not dry_run and _goes_remote(plan, remote, code_dir)  # its refusals come before the warnings
    _warn(plan)
    if going:
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


def _goes_remote(plan, remote: bool | None, code_dir: str | None = None) -> bool:
    """:func:`hpcorch.service.lifecycle.goes_remote`, imported only when asked: a dry run never
    goes over SSH, and lifecycle brings the stop protocol with it."""
    from hpcorch.service.lifecycle import goes_remote

    return goes_remote(plan, remote, code_dir)


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
        if state != "COMPLETED" and info.get("failure"):
            click.echo(f"error: {info['failure']}", err=True)
        sys.exit(0 if state == "COMPLETED" else 1)


@click.command()
@job_argument
@profile_option()
@template_option
@job_options
@click.pass_context
def render(ctx, job, profile_name, template_dir, overrides, run_dir):
    """Print the sbatch script for JOB (the same as submit --dry-run)."""
    ctx.invoke(submit, job=job, profile_name=profile_name, dry_run=True, check=False,
               template_dir=template_dir, overrides=overrides, run_dir=run_dir)


@click.command()
@job_argument
@profile_option()
@json_option()
@nccl_debug_option
@force_option
@job_options
def plan(job, profile_name, as_json, overrides, run_dir, nccl_debug=None, force=False):
    """Check that JOB fits the profile and show what it will use."""
    from hpcorch import service
    from hpcorch.cli.views import plan_lines, text
    from hpcorch.service.lifecycle import summary

    the_plan = service.plan(job, profile_name, overrides, run_dir, nccl_debug=nccl_debug, force=force)
    _warn(the_plan)
    click.echo(text(summary(the_plan), as_json, plan_lines))


@click.command()
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
    from hpcorch import service
    from hpcorch.service.lifecycle import CHECKPOINTED

    code, run_path = service.train(job, nproc, overrides, run_dir, resume_step, peak_tflops,
                                   allow_config_change=allow_config_change)
    if code == CHECKPOINTED:
        click.echo(f"checkpointed; run the same command again to resume ({run_path})", err=True)
    sys.exit(code)


@click.command("ls")
@click.option("--expand", is_flag=True, help="One line per sweep point, not one per sweep.")
@json_option()
def list_jobs(as_json, expand=False):
    """List submitted jobs with their states (one batched squeue/sacct call), a sweep as one line.

    `hpcorch sweep status NAME` (or --expand) shows a sweep's points."""
    from hpcorch import service
    from hpcorch.cli.views import jobs_lines, text

    click.echo(text(service.jobs(), as_json, lambda rows: jobs_lines(rows, expand=expand)))


@click.command()
@ref_argument()
@json_option()
def status(ref, as_json):
    """State, restarts, latest checkpoint, last loss and tokens/s of job REF
    (a registry number, Slurm job id, job name or run directory)."""
    from hpcorch import service
    from hpcorch.cli.views import status_lines, text

    click.echo(text(service.status(ref), as_json, status_lines))


@click.command()
@ref_argument()
@click.option("--rank", type=click.IntRange(0), default=0, show_default=True, help="Whose log.")
@click.option("--err", "stream", flag_value="err", default="out", help="Standard error instead of output.")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing until the job ends.")
def logs(ref, rank, stream, follow_):
    """Print a rank's log of job REF."""
    from hpcorch import service

    service.logs(ref, _echo, rank=rank, stream=stream, follow=follow_, show_submitit=_verbose())


@click.command()
@ref_argument()
@json_option(STDOUT_JSON_HELP)
def cancel(ref, as_json):
    """Cancel job REF. Its ranks get SIGTERM and checkpoint first; `hpcorch resume` continues it."""
    from hpcorch import service

    said = service.cancel(ref)
    click.echo(json.dumps({"ref": ref, "result": said}) if as_json else said)


@click.command()
@ref_argument()
@click.option("--exclude", help="Also exclude these nodes (a Slurm hostlist).")
@wait_option("Follow rank 0's log until the job ends.")
@json_option("Print the new submission as JSON on stdout.")
@allow_config_change_option
@template_option
def resume(ref, exclude, wait, allow_config_change, template_dir, as_json=False):
    """Submit job REF again from its latest checkpoint, excluding nodes that failed under it."""
    from hpcorch import service

    _report(service.resume(ref, exclude=exclude, allow_config_change=allow_config_change,
                           template_dir=template_dir), wait, as_json)


@click.command()
@ref_argument()
@click.option("--to", "into", type=click.Path(file_okay=False),
              help="Into this folder [default: $HPCORCH_HOME/pulled/NUMBER-NAME].")
@json_option(STDOUT_JSON_HELP)
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


@click.command()
@ref_argument("RUN_DIR_OR_REF")
@click.option("--step", type=click.IntRange(0), default=None, help="This committed step (default: the latest).")
@click.option("--out", required=True, type=click.Path(),
              help="--format hpcorch: model.safetensors (needs the safetensors package; else a .pt is "
                   "written) or FILE.pt; --format hf: a folder.")
@click.option("--format", "fmt", type=click.Choice(["hpcorch", "hf"]), default="hpcorch", show_default=True,
              help="hpcorch: one file under hpcorch's names; hf: a Hugging Face folder (config.json, "
                   "model.safetensors, generation_config.json) that transformers' from_pretrained loads.")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="--format hf: above this, the weights are sharded (model-0000k-of-0000n.safetensors + index).")
@json_option(STDOUT_JSON_HELP)
def export(ref, step, out, fmt, max_shard_size, as_json):
    """Write a checkpoint's model weights for use outside hpcorch: one plain file, or a Hugging
    Face folder (--format hf)."""
    from hpcorch import service

    path = service.export(ref, out, step=step, format=fmt, max_shard_size=max_shard_size)
    size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
    click.echo(json.dumps({"path": str(path), "bytes": size}) if as_json else f"wrote {path}")


COMMANDS = (submit, render, plan, train, list_jobs, status, logs, cancel, resume, pull, export)
