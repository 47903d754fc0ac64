"""``hpcorch data prepare|show``: a corpus into token shards, over :mod:`hpcorch.service.data`."""
from __future__ import annotations

import click

from hpcorch.cli.options import json_option


@click.group()
def data():
    """Prepare a corpus into token shards (here or as a Slurm job array) and show datasets."""


@data.command("prepare")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The dataset folder to write.")
@click.option("--tokenizer", default="gpt2", show_default=True,
              help="gpt2, bytes, or the path of a Hugging Face tokenizer.json (PATH:eot=TOKEN names its end-of-text).")
@click.option("--jsonl-field", default="text", show_default=True, help="The text field of .jsonl/.ndjson lines.")
@click.option("--on-error", type=click.Choice(["skip", "stop"]), default="stop", show_default=True,
              help="Bad input (unreadable file, invalid UTF-8, bad JSONL line): skip and count it, or stop.")
@click.option("--shard-bytes", type=click.IntRange(min=1), default=256 << 20, show_default=True,
              help="Input bytes per shard: consecutive files up to this size make one shard.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes here (without --profile).")
@click.option("-p", "--profile", default=None, help="Submit as one Slurm job array on this cluster profile.")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None, help="At most K array tasks at once (%K).")
@click.option("--cpus", type=click.IntRange(min=1), default=1, show_default=True, help="CPUs per array task.")
@click.option("--time", "time_limit", default="60", show_default=True, help="Time limit per array task.")
@click.option("--dry-run", is_flag=True, help="Print the array script; write and submit nothing.")
@click.option("--check", is_flag=True, help="Ask Slurm whether it would accept the array (sbatch --test-only).")
@json_option()
def prepare(inputs, out, tokenizer, jsonl_field, on_error, shard_bytes, processes, profile, max_parallel, cpus,
            time_limit, dry_run, check, as_json):
    """Tokenize INPUT... (files, folders, globs; text files or JSONL, .gz/.zst) into token shards
    and a dataset.json in --out. Rerunning redoes only unfinished shards."""
    import json
    from dataclasses import asdict

    from hpcorch.service import data as service

    result = service.prepare(list(inputs), out, tokenizer=tokenizer, jsonl_field=jsonl_field, on_error=on_error,
                             shard_bytes=shard_bytes, processes=processes, profile=profile,
                             max_parallel=max_parallel, dry_run=dry_run, check=check, cpus=cpus,
                             time_limit=time_limit)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
    elif dry_run:
        click.echo(result.script, nl=False)
    elif check:
        click.echo(f"{len(result.ran)} of {result.shards} shards to prepare; Slurm: {result.check}")
    elif result.finished and not result.ran:
        click.echo(f"{result.out}: already prepared ({result.shards} shards); nothing to do")
    elif result.arrays:
        click.echo(f"submitted {len(result.ran)} of {result.shards} shards as array "
                   f"{', '.join(result.arrays)}; logs in {result.out}/prepare/logs")
    else:
        click.echo(f"{result.out}: prepared {len(result.ran)} of {result.shards} shards"
                   + ("" if result.finished else " (not finished)"))


@data.command("show")
@click.argument("folder", type=click.Path(file_okay=False))
@json_option()
def show(folder, as_json):
    """What a prepared dataset holds: tokens, documents, shards, tokenizer, sources, skipped."""
    from hpcorch.cli.views import text
    from hpcorch.service import data as service

    click.echo(text(service.show(folder), as_json, _show_lines))


def _show_lines(info: dict) -> list[str]:
    if not info["finished"]:
        return [f"{info['folder']}: prepare not finished: {info['shards_done']} of {info['shards']} shards done "
                f"(tokenizer {info['tokenizer']}, {info['sources']} source files)"]
    lines = [f"{info['folder']}",
             f"  tokenizer  {info['tokenizer']} (vocab {info['vocab_size']}, eot {info['eot_id']}, "
             f"sha256 {info['tokenizer_sha256'][:12]})",
             f"  tokens     {info['tokens']:,} ({info['dtype']})",
             f"  documents  {info['documents']:,}",
             f"  shards     {info['shards']}",
             f"  sources    {info['sources']} files",
             f"  skipped    {info['skipped']}"]
    lines += [f"    {path}: {n}" for path, n in info["skipped_by_source"].items()]
    return lines


@data.command("status")
@click.argument("folder", type=click.Path(file_okay=False))
@json_option()
def status(folder, as_json):
    """Each shard of a prepare: done, running, pending, failed or not submitted (its completion
    marker, then Slurm's state of the array task that ran it last)."""
    from dataclasses import asdict

    from hpcorch.cli.views import text
    from hpcorch.service import data_jobs

    rows = [asdict(r) for r in data_jobs.status(folder)]
    click.echo(text(rows, as_json, _status_lines))


def _status_lines(rows: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    lines = [", ".join(f"{n} {state}" for state, n in counts.items()) + f" (of {len(rows)} shards)"]
    lines += [f"  {r['shard']}  {r['state']:<13}" + (f" {r['task']} {r['slurm'] or 'UNKNOWN'}" if r["task"] else "")
              for r in rows if r["state"] != "done"]
    return lines


@data.command("cancel")
@click.argument("folder", type=click.Path(file_okay=False))
def cancel(folder):
    """Cancel the Slurm arrays this prepare submitted that still have tasks queued or running.
    Finished shards stay; rerunning the prepare redoes the rest."""
    from hpcorch.service import data_jobs

    cancelled = data_jobs.cancel(folder)
    click.echo(f"cancelled array {', '.join(cancelled)}" if cancelled
               else f"{folder}: no array of this prepare is queued or running; nothing to cancel")


@data.command("logs")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--task", "shard", type=click.IntRange(min=0), default=None,
              help="The shard number whose array task's output to print (default: each failed shard's).")
@click.option("--err/--out", "err_only", default=None, help="Only the error (or only the output) stream.")
def logs(folder, shard, err_only):
    """Print the Slurm output and error of the array task that ran a shard last."""
    from hpcorch.service import data_jobs

    if shard is None:
        shards = [int(r.shard.rsplit("_", 1)[1]) for r in data_jobs.status(folder) if r.state == "failed"]
        if not shards:
            click.echo(f"{folder}: no failed shard; name one with --task N")
            return
    else:
        shards = [shard]
    for number in shards:
        for kind, path in data_jobs.logs(folder, number).items():
            if err_only is not None and (kind == "err") != err_only:
                continue
            click.echo(f"==> {path} <==")
            click.echo(path.read_text(errors="replace") if path.exists() else "(no such file yet)")
