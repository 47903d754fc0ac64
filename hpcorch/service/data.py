"""``hpcorch data``: prepare a corpus into token shards here or as one Slurm job array, and show
a prepared dataset. The work is :mod:`hpcorch.data.prepare`'s; the array mechanics are
:mod:`hpcorch.submit.array`'s (the one owner of "submit N tasks, know which are done")."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from hpcorch.data import prepare as prep
from hpcorch.data.index import DatasetIndex
from hpcorch.data.tokenizer import NAMES, load_tokenizer
from hpcorch.errors import HpcorchError
from hpcorch.util.fileio import atomic_write, read_json


@dataclass
class PrepareResult:
    """What one ``hpcorch data prepare`` did: ``ran`` the shards it made (here) or submitted,
    ``arrays`` the Slurm array ids, ``script`` the first array's script (dry runs print it)."""

    out: str
    shards: int
    ran: list[str] = field(default_factory=list)
    arrays: list[str] = field(default_factory=list)
    script: str = ""
    check: str = ""
    finished: bool = False
    index: dict | None = None


def plan_prepare(inputs: list[str], out: str | os.PathLike, tokenizer: str = "gpt2", jsonl_field: str = "text",
                 on_error: str = "stop", shard_bytes: int = prep.DEFAULT_SHARD_BYTES) -> prep.PreparePlan:
    """The plan of a prepare (nothing written)."""
    return _plan(inputs, out, load_tokenizer(tokenizer), jsonl_field, on_error, shard_bytes)


def _plan(inputs, out, tok, jsonl_field, on_error, shard_bytes) -> prep.PreparePlan:
    options = prep.Options(jsonl_field=jsonl_field, on_error=on_error, shard_bytes=shard_bytes)
    return prep.make_plan(list(inputs), Path(out), tok, options)


def prepare(inputs: list[str], out: str | os.PathLike, tokenizer: str = "gpt2", jsonl_field: str = "text",
            on_error: str = "stop", shard_bytes: int = prep.DEFAULT_SHARD_BYTES, processes: int = 1,
            profile: str | None = None, max_parallel: int | None = None, dry_run: bool = False,
            check: bool = False, cpus: int = 1, time_limit: str = "60") -> PrepareResult:
    """Prepare ``inputs`` into ``out``: here with ``processes`` processes, or with ``profile`` as
    one Slurm job array of the unfinished shards (``max_parallel`` -> ``%K``). A finished
    folder does nothing. ``dry_run`` writes nothing and returns the array script;
    ``check`` asks Slurm (``sbatch --test-only``) without submitting."""
    if processes < 1:
        raise HpcorchError(f"--processes {processes}: expected a whole number of at least 1")
    tok = load_tokenizer(tokenizer)
    plan = _plan(inputs, out, tok, jsonl_field, on_error, shard_bytes)
    result = PrepareResult(str(plan.out), len(plan.groups))
    if prep.is_finished(plan.out) and prep.plan_path(plan.out).exists():
        prep.save_plan(plan)  # refuses a folder of other inputs/options
        result.finished = True
        return result
    if profile is None:
        if dry_run or check:
            raise HpcorchError("--dry-run and --check show a Slurm array: name a cluster with --profile")
        prep.save_plan(plan)
        result.ran = prep.run_here(plan, processes, tok)
        result.finished = prep.is_finished(plan.out)
        return result
    return _submit(plan, result, profile, max_parallel, dry_run, check, cpus, time_limit)


def _submit(plan: prep.PreparePlan, result: PrepareResult, profile: str, max_parallel: int | None,
            dry_run: bool, check: bool, cpus: int, time_limit: str) -> PrepareResult:
    from hpcorch.cluster.slurm import Slurm
    from hpcorch.service.data_jobs import record_submission
    from hpcorch.spec.profile import load_profile
    from hpcorch.submit.array import ArrayBatch, plan_arrays, submit_slurm

    cluster = load_profile(profile)
    if cluster.scheduler != "slurm":
        raise HpcorchError(f"--profile {profile}: a data prepare array needs a Slurm profile; "
                           "without --profile it runs here (--processes N)")
    if dry_run or check:
        # Nothing is written: the script of all unfinished shards, as a first submission sends it.
        done = plan.tasks.done() if plan.tasks.tasks_file.exists() else set()
        todo = [n for n in plan.shard_names if n not in done]
        run_list = plan.tasks.runs_dir / "NNNN.txt"
        batches = [ArrayBatch(plan.tasks.root, run_list, 0, max(len(todo), 1), max_parallel)]
    else:
        prep.save_plan(plan)
        # A finished array whose last task crashed before writing dataset.json: finish here.
        if prep.finish(plan) is not None:
            result.finished = True
            return result
        _refuse_while_queued(plan, Slurm())
        todo = plan.tasks.remaining()
        batches = plan_arrays(plan.tasks, todo, max_parallel, Slurm().max_array_size())
    scripts = [render_prepare(plan, cluster, b, cpus, time_limit) for b in batches]
    result.script, result.ran = scripts[0], todo
    if check:
        result.check = Slurm().test_only(scripts[0])
    if dry_run or check:
        return result
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    result.arrays = submit_slurm(scripts)
    arrays = _arrays_file(plan)
    atomic_write(arrays, json.dumps(_submitted(plan) + result.arrays) + "\n")
    record_submission(plan.out, batches, result.arrays)
    return result


def _arrays_file(plan: prep.PreparePlan) -> Path:
    return plan.out / prep.WORK / "arrays.json"


def _submitted(plan: prep.PreparePlan) -> list[str]:
    """The ids of the arrays submitted for ``plan.out`` so far."""
    try:
        return list(json.loads(_arrays_file(plan).read_text()))
    except (OSError, ValueError):
        return []


_ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
           "RESIZING", "SIGNALING", "STAGE_OUT")


def _refuse_while_queued(plan: prep.PreparePlan, slurm) -> None:
    """A rerun while an earlier array of this folder still has tasks queued or running would run
    their shards twice: refused with what to do."""
    for array in _submitted(plan):
        active = [t for t, state in slurm.array_tasks(array).items() if state.split()[0] in _ACTIVE]
        if active:
            raise HpcorchError(f"{plan.out}: array {array} still has {len(active)} task(s) queued or running; "
                               f"wait for it (hpcorch data status {plan.out}) "
                               f"or cancel it (hpcorch data cancel {plan.out})")


def render_prepare(plan: prep.PreparePlan, cluster, batch, cpus: int = 1, time_limit: str = "60") -> str:
    """The array script of ``batch`` (shards of ``plan``) on ``cluster``: the profile's account,
    QOS, extra directives, modules, prepended folders and variables; one shard per task, its
    step started with the profile's launch wrapper and interpreter, as a training rank is."""
    from hpcorch import __version__
    from hpcorch.plan.launch import profile_launch
    from hpcorch.render.sbatch import render_template

    partition = next((p.name for p in cluster.partitions if getattr(p, "default", False)), None)
    return render_template("hpcorch/prepare.sh.j2", array=batch, profile=cluster, out=str(plan.out),
                           name=f"prepare-{plan.out.name}", partition=partition, cpus=int(cpus),
                           time_limit=str(time_limit), log_dir=str(plan.log_dir),
                           launch=profile_launch(cluster), version=__version__)


def show(folder: str | os.PathLike) -> dict:
    """What a prepared dataset holds (``dataset.json``), or how far its prepare got."""
    folder = Path(folder)
    try:
        index = DatasetIndex.load(folder)
    except HpcorchError:
        raise
    except ValueError as exc:  # FormatError: one line naming the file
        if prep.plan_path(folder).exists():
            plan = prep.load_plan(folder)
            done = len(plan.tasks.done()) if plan.tasks.tasks_file.exists() else 0
            return {"folder": str(folder), "finished": False, "shards": len(plan.groups), "shards_done": done,
                    "tokenizer": plan.tokenizer.name, "sources": len(plan.files)}
        raise HpcorchError(str(exc)) from None
    return {"folder": str(folder), "finished": True, "tokenizer": index.tokenizer.name,
            "tokenizer_sha256": index.tokenizer.sha256, "vocab_size": index.tokenizer.vocab_size,
            "eot_id": index.tokenizer.eot_id, "dtype": index.dtype, "tokens": index.tokens,
            "documents": index.documents, "shards": len(index.shards), "sources": len(index.sources),
            "skipped": index.skipped, "skipped_by_source": {s.path: s.skipped for s in index.sources if s.skipped},
            "options": index.options}


def run_tokenizer(job, base: str | os.PathLike | None = None) -> str | None:
    """The tokenizer a job trains with: its ``trainer.data.tokenizer``, else the tokenizer its
    first prepared dataset was made with; None when its data names none (bytes of files).
    Relative paths in the job are read under ``base`` (where the run was submitted from, whose
    working directory its ranks resolved them in), else under this process's."""
    data = getattr(getattr(job, "trainer", None), "data", None)
    name = getattr(data, "tokenizer", None)
    if name:
        name = str(name)
        if base is not None and name not in NAMES and not Path(name).is_absolute():
            name = str(Path(base) / name)  # a tokenizer.json path (PATH[:eot=TOKEN])
        return name
    for _key, folder in getattr(data, "datasets", None) or []:
        return DatasetIndex.load(Path(base or ".") / folder).tokenizer.name
    return None


def submitted_from(run) -> Path | None:
    """The directory run ``run`` (a RunDir) was submitted from, as its submission manifest
    records it; None when there is none (a run dir from elsewhere or an older hpcorch)."""
    code_dir = read_json(run.manifest_file(None)).get("code_dir")
    return Path(code_dir) if code_dir else None


def write_hf_tokenizer(job, out: str | os.PathLike, base: str | os.PathLike | None = None) -> list[Path]:
    """Beside an ``hpcorch export --format hf`` folder's weights: the files of the job's
    tokenizer that ``AutoTokenizer.from_pretrained(out)`` loads (none when the job names none).
    ``base``: as :func:`run_tokenizer`'s."""
    name = run_tokenizer(job, base)
    return load_tokenizer(name).save_hf(Path(out)) if name else []
