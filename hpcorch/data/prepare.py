"""A corpus made into token shards: a plan, one task per shard, and ``dataset.json`` last.

The plan cuts the input files (in input order) into groups of at most ``shard_bytes`` bytes on
disk (a larger file is a group of its own); group ``i`` becomes ``shard_{i:05d}.bin/.idx``. The
rule depends on the files alone, never on how many processes or array tasks run it, so the
shards and ``dataset.json`` are byte-identical whether made by 1 process, N processes or a Slurm
array. Each shard is one task of :class:`hpcorch.state.arraytasks.ArrayTasks` (the one owner of
"which tasks are done"): a task writes its shard atomically (:class:`ShardWriter`), then its
completion marker holding the shard's and its sources' records; whoever sees every marker
writes ``dataset.json`` from them. A rerun redoes only tasks without a marker.

Layout of ``OUT``::

    OUT/shard_00000.bin .idx ...   the shards (Megatron .bin/.idx)
    OUT/dataset.json               written last (hpcorch.data.index)
    OUT/prepare/plan.json          inputs, their sizes, the tokenizer, options, groups
    OUT/prepare/tasks/             task list and completion markers (ArrayTasks)
    OUT/prepare/logs/              an array's task logs (A_i.out, A_i.err)
    OUT/prepare/arrays.json        the ids of the arrays submitted (hpcorch.service.data)
    OUT/prepare/submissions.json   which array ran which shards (hpcorch.service.data_jobs)

Each document is its tokens followed by the tokenizer's end-of-text id.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hpcorch.data.corpus import POLICIES, CorpusError, Source, expand_inputs, file_sizes
from hpcorch.data.format import ShardInfo, ShardWriter, token_dtype
from hpcorch.data.index import INDEX_NAME, DatasetIndex, SourceFile, TokenizerRef
from hpcorch.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from hpcorch.errors import HpcorchError
from hpcorch.state.arraytasks import ArrayTasks
from hpcorch.util.fileio import atomic_write

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 256 << 20
WORK = "prepare"


class PrepareError(HpcorchError):
    """A prepare that cannot go on: one line naming the folder or file."""


@dataclass(frozen=True)
class Options:
    """How documents are read; part of the plan (and of ``dataset.json``'s ``options``)."""

    jsonl_field: str = "text"
    on_error: str = "stop"
    shard_bytes: int = DEFAULT_SHARD_BYTES

    def __post_init__(self):
        if self.on_error not in POLICIES:
            raise PrepareError(f"--on-error {self.on_error!r}: expected one of {', '.join(POLICIES)}")
        if self.shard_bytes < 1:
            raise PrepareError(f"--shard-bytes {self.shard_bytes}: expected a positive number of bytes")
        if not self.jsonl_field:
            raise PrepareError("--jsonl-field: expected a field name")


@dataclass(frozen=True)
class PreparePlan:
    """What a prepare of ``out`` makes: ``groups[i]`` are the indices into ``files`` of shard ``i``."""

    out: Path
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    tokenizer: TokenizerRef
    options: Options
    groups: tuple[tuple[int, ...], ...]

    @property
    def shard_names(self) -> list[str]:
        return [shard_name(i) for i in range(len(self.groups))]

    @property
    def dtype(self) -> str:
        return token_dtype(self.tokenizer.vocab_size)

    @property
    def tasks(self) -> ArrayTasks:
        return ArrayTasks(self.out / WORK / "tasks")

    @property
    def log_dir(self) -> Path:
        return self.out / WORK / "logs"

    def to_json(self) -> str:
        return json.dumps({"files": list(self.files), "sizes": list(self.sizes), "tokenizer": asdict(self.tokenizer),
                           "options": asdict(self.options), "groups": [list(g) for g in self.groups]}, indent=1) + "\n"


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def group_files(sizes: list[int], shard_bytes: int) -> list[tuple[int, ...]]:
    """Consecutive files up to ``shard_bytes`` per group (a larger file alone): a function of the
    sizes only."""
    groups: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if not groups or (groups[-1] and total + size > shard_bytes):
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += size
    return [tuple(g) for g in groups]


def make_plan(inputs: list[str], out: Path, tokenizer: Tokenizer, options: Options) -> PreparePlan:
    """The plan of a prepare of ``inputs`` into ``out`` (nothing is written)."""
    files = expand_inputs(inputs)
    sizes = file_sizes(files)
    return PreparePlan(Path(out).resolve(), tuple(str(f) for f in files), tuple(sizes), tokenizer.ref(), options,
                       tuple(group_files(sizes, options.shard_bytes)))


def plan_path(out: Path) -> Path:
    return Path(out) / WORK / "plan.json"


def save_plan(plan: PreparePlan) -> None:
    """Write the plan and the task list, or check they equal what ``out`` already holds: a
    folder prepared from other inputs or options is refused, never mixed."""
    path = plan_path(plan.out)
    if path.exists():
        if path.read_text() != plan.to_json():
            old = load_plan(plan.out)
            why = _difference(old, plan)
            raise PrepareError(f"{plan.out}: holds a prepare of other inputs or options ({why}); "
                               "use a new --out folder or remove this one")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, plan.to_json())
    plan.tasks.create(plan.shard_names)


def _difference(old: PreparePlan, new: PreparePlan) -> str:
    if old.tokenizer != new.tokenizer:
        return f"tokenizer {old.tokenizer.name} then, {new.tokenizer.name} now"
    if old.options != new.options:
        return f"options {asdict(old.options)} then, {asdict(new.options)} now"
    for i, (f, s) in enumerate(zip(new.files, new.sizes, strict=True)):
        if i >= len(old.files) or (old.files[i], old.sizes[i]) != (f, s):
            return f"{f} differs"
    return f"{len(old.files)} files then, {len(new.files)} now"


def load_plan(out: Path) -> PreparePlan:
    """The plan ``out`` was prepared with; a folder without one is one line."""
    path = plan_path(out)
    try:
        raw = json.loads(path.read_text())
        return PreparePlan(Path(out).resolve(), tuple(raw["files"]), tuple(raw["sizes"]),
                           TokenizerRef(**raw["tokenizer"]), Options(**raw["options"]),
                           tuple(tuple(g) for g in raw["groups"]))
    except FileNotFoundError:
        raise PrepareError(f"{path}: not found; {out} is not a prepare folder") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrepareError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def check_tokenizer(plan: PreparePlan) -> Tokenizer:
    """The plan's tokenizer, loaded here, refused if its files differ from the planned ones (a
    compute node with another vocabulary installed)."""
    tok = load_tokenizer(plan.tokenizer.name)
    if tok.ref() != plan.tokenizer:
        raise TokenizerError(f"tokenizer {plan.tokenizer.name}: sha256 {tok.sha256[:12]}... here, "
                             f"{plan.tokenizer.sha256[:12]}... when {plan.out} was planned")
    return tok


def run_shard(plan: PreparePlan, index: int, tok: Tokenizer) -> ShardInfo:
    """Make shard ``index`` and mark it done (the marker last, after the shard is durable)."""
    name = shard_name(index)
    # Temporary files of an earlier attempt at this shard that was killed mid-write (one task
    # owns a shard, so nobody else is writing them).
    for stale in plan.out.glob(f"{name}.*.tmp"):
        stale.unlink(missing_ok=True)
    sources = []
    try:
        with ShardWriter(plan.out / name, plan.dtype) as writer:
            for i in plan.groups[index]:
                source = Source(Path(plan.files[i]), plan.options.jsonl_field, plan.options.on_error)
                for text in source:
                    ids = tok.encode_array(text)
                    doc = np.empty(len(ids) + 1, dtype=ids.dtype)
                    doc[:-1], doc[-1] = ids, tok.eot_id
                    writer.add(doc)
                sources.append(source.record())
    except OSError as exc:
        raise PrepareError(f"{plan.out / name}.bin: cannot write the shard ({exc.strerror or exc}); "
                           "nothing of it was published, rerun to redo it") from None
    info = writer.info
    plan.tasks.mark_done(name, {"shard": asdict(info), "sources": [asdict(s) for s in sources]})
    log.info("%s: %d documents, %d tokens", name, info.documents, info.tokens)
    return info


def finish(plan: PreparePlan) -> DatasetIndex | None:
    """Write ``dataset.json`` once every shard is done (from the markers, in plan order); None
    while some are not. Content is a function of the plan and the shards alone."""
    tasks = plan.tasks
    if tasks.remaining():
        return None
    shards, sources = [], []
    for name in plan.shard_names:
        info = tasks.done_info(name)
        shards.append(ShardInfo(**info["shard"]))
        sources += (SourceFile(**s) for s in info["sources"])
    index = DatasetIndex(tokenizer=plan.tokenizer, dtype=plan.dtype, shards=shards, sources=sources,
                         options=asdict(plan.options))
    index.save(plan.out)
    return index


def is_finished(out: Path) -> bool:
    return (Path(out) / INDEX_NAME).exists()


# ----- running the tasks here ------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(out: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    plan = load_plan(Path(out))
    _WORKER.update(plan=plan, tok=check_tokenizer(plan))


def _work(index: int) -> ShardInfo:
    return run_shard(_WORKER["plan"], index, _WORKER["tok"])


def run_here(plan: PreparePlan, processes: int = 1, tok: Tokenizer | None = None) -> list[str]:
    """Run the plan's unfinished shards on this machine with ``processes`` worker processes, then
    write ``dataset.json``; the names of the shards it made. ``tok``: the plan's tokenizer if
    already loaded (each worker process loads its own)."""
    todo = plan.tasks.remaining()
    indices = [plan.shard_names.index(name) for name in todo]
    if processes <= 1 or len(indices) <= 1:
        tok = tok if tok is not None and tok.ref() == plan.tokenizer else check_tokenizer(plan)
        for i in indices:
            run_shard(plan, i, tok)
    else:
        import multiprocessing

        # spawn, not fork: the parent may hold the tokenizer library's threads.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(processes, len(indices)), _init_worker, (str(plan.out),)) as pool:
            for _ in pool.imap_unordered(_work, indices):
                pass
    finish(plan)
    return todo


# ----- one array task -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m hpcorch.data.prepare OUT``: the array task of ``$HPCORCH_ARRAY_TASK`` (a shard
    name); the last task to finish writes ``dataset.json``."""
    from hpcorch.state.arraytasks import current_task

    parser = argparse.ArgumentParser(prog="python -m hpcorch.data.prepare")
    parser.add_argument("out")
    parser.add_argument("--shard", help="a shard name (default: $HPCORCH_ARRAY_TASK)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        plan = load_plan(Path(args.out))
        name = args.shard or current_task()
        if name not in plan.shard_names:
            raise PrepareError(f"{name}: not a shard of {plan.out} ({len(plan.groups)} shards)")
        if not plan.tasks.is_done(name):
            run_shard(plan, plan.shard_names.index(name), check_tokenizer(plan))
        if finish(plan) is not None:
            log.info("%s: every shard done; wrote %s", plan.out, INDEX_NAME)
    except (HpcorchError, CorpusError) as exc:
        print(f"hpcorch: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
