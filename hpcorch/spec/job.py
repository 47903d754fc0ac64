"""Job specs: what to train, with which resources, and how to survive interruptions."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from hpcorch.errors import ConfigError
from hpcorch.spec import catalog
from hpcorch.spec.data import DataMix, DataSpec  # noqa: F401 - DataMix re-exported with DataSpec
from hpcorch.spec.expand import check_expandable
from hpcorch.spec.health import JobHealth
from hpcorch.spec.launch import Launch
from hpcorch.spec.model import ModelConfig, default_model
from hpcorch.spec.noderange import nearby, valid_counts
from hpcorch.spec.parallel import Layout, ParallelSpec, resolve_layout
from hpcorch.spec.placement import Placement
from hpcorch.spec.program import ProgramSpec
from hpcorch.spec.resources import Resources
from hpcorch.spec.schema import (
    KIND_DEFAULT,
    Invalid,
    build,
    check_env_names,
    check_name,
    check_positive,
    set_dotted,
    to_dict,
)
from hpcorch.spec.yamlio import read_yaml


@dataclass
class OptimizerSpec:
    """``trainer.optimizer``: the optimizer, its learning-rate schedule and gradient clipping."""

    name: Literal["adamw", "adafactor"] = "adamw"
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    warmup_steps: int = 100

    def __post_init__(self):
        check_positive(self, "lr")
        check_positive(self, "min_lr", "weight_decay", "grad_clip", "warmup_steps", allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise Invalid("betas", f"expected two numbers in [0, 1), got {self.betas}")


@dataclass
class CheckpointSpec:
    """``trainer.checkpoint``: where, how often and how many checkpoints are kept."""

    dir: str | None = None  # default: <run dir>/checkpoints
    interval: int = 100     # steps between checkpoints
    keep: int = 2
    async_save: bool = False

    def __post_init__(self):
        check_positive(self, "interval")
        if self.keep < 1:
            raise Invalid("keep", f"expected at least 1 checkpoint kept, got {self.keep}")


@dataclass
class TrainerSpec:
    """``trainer:``: model, data, optimizer, checkpoints and the batch arithmetic."""

    # A choice tagged on ``kind`` (hpcorch.spec.model.MODEL_CONFIGS); no kind: the default's.
    model: ModelConfig = field(default_factory=default_model, metadata={KIND_DEFAULT: True})
    data: DataSpec = field(default_factory=DataSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    steps: int = 100
    global_batch: int = 16  # sequences per optimizer step, over all ranks
    micro_batch: int = 4    # sequences per forward/backward on one rank
    seed: int = 1337
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    sharding: Literal["ddp", "fsdp"] = "ddp"  # shorthand: which data-parallel dimension fills the world
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    activation_checkpointing: bool = False
    compile: bool = False
    # Tokens per chunk of the output layer + loss (hpcorch.train.models.decoder.head_and_loss):
    # the whole micro-batch's fp32 logits never exist at once. 0: the loss in one piece.
    loss_chunk: int = 1024
    grad_compression: Literal["none", "fp16", "bf16", "powersgd"] = "none"
    eval_interval: int = 0  # 0: only at the end
    eval_batches: int = 4
    log_interval: int = 10
    collective_timeout_s: int = 300
    # More destinations for rank 0's reports (hpcorch.train.sinks): TensorBoard event files in
    # RUN_DIR/tensorboard, W&B offline runs in RUN_DIR/wandb.
    loggers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    # A Hugging Face checkpoint folder (config.json + safetensors) whose weights replace the
    # random init at a run's first start (hpcorch.train.checkpoint.hf); a resume ignores it.
    # Checked where the trainer runs (the folder need not exist where the job is submitted).
    init_from: str | None = None

    def __post_init__(self):
        check_positive(self, "steps", "global_batch", "micro_batch", "eval_batches", "log_interval",
                       "collective_timeout_s")
        check_positive(self, "eval_interval", "loss_chunk", allow_zero=True)
        if self.init_from is not None and not self.init_from.strip():
            raise Invalid("init_from", "expected a folder holding config.json and model.safetensors, got an empty path")
        if len(set(self.loggers)) != len(self.loggers):
            raise Invalid("loggers", f"expected each logger once, got {self.loggers}")
        if not 0 <= self.seed < 2**64:
            raise Invalid("seed", f"expected 0 <= seed < 2**64 (what torch accepts), got {self.seed}")
        m = self.model
        self.parallel.check_model(m.layers, m.heads, m.vocab, m.seq_len, getattr(m, "kv_heads", None))

    def layout(self, world_size: int) -> Layout:
        """The parallel layout on ``world_size`` ranks; raises :class:`Invalid` (key under trainer)."""
        return resolve_layout(self.parallel, self.sharding, world_size, self.global_batch, self.micro_batch)


@dataclass
class RequeuePolicy:
    """``requeue:``: when an interrupted job is requeued, and when it gives up."""

    enabled: bool = True
    max_preemptions: int = 20
    max_timeouts: int = 5
    max_node_failures: int = 3
    signal: Literal["USR1", "USR2"] = "USR2"  # SIGTERM means cancel: checkpoint, never requeue
    signal_lead_s: int = 120  # before the time limit: enough for one step and one checkpoint
    # The same failure at the same step this many times in a row stops the job (0: never).
    crash_loop: int = 3
    # This many attempts in a row that commit no new checkpoint stop the job (0: never).
    no_progress_attempts: int = 3

    @property
    def signum(self) -> int:
        import signal

        return getattr(signal, f"SIG{self.signal}")

    def __post_init__(self):
        check_positive(self, "max_preemptions", "max_timeouts", "max_node_failures", "crash_loop",
                       "no_progress_attempts", allow_zero=True)
        if not 10 <= self.signal_lead_s <= 65535:
            raise Invalid("signal_lead_s", f"expected 10 to 65535 seconds, got {self.signal_lead_s}")


@dataclass
class JobSpec:
    """A job file: what to train, on which resources, and how it is launched and placed."""

    name: str
    resources: Resources = field(default_factory=Resources)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    environment: dict[str, str | int | float] = field(default_factory=dict)
    requeue: RequeuePolicy = field(default_factory=RequeuePolicy)
    description: str = ""
    launch: Launch = field(default_factory=Launch)  # wins over the profile's, key by key
    placement: Placement = field(default_factory=Placement)  # leaf switches / segments (topology)
    health: JobHealth = field(default_factory=JobHealth)  # pre-flight check on or off
    # The user's own training program instead of hpcorch's trainer (then ``trainer`` is unused).
    program: ProgramSpec | None = None

    def __post_init__(self):
        check_name("name", self.name, "a job name")
        try:
            check_env_names(self.environment)
        except Invalid as exc:
            raise Invalid(f"environment.{exc.field}", exc.message) from None
        for name, value in self.environment.items():
            check_expandable(f"environment.{name}", value)
        res = self.resources
        # The node counts the job can run on (ascending): for a range, those whose world size
        # holds the trainer's layout and global batch; the range shrinks to the valid ends.
        self.nodes_asked = (res.nodes_min, res.nodes)  # as written, before the ends move to valid counts
        self.node_counts = list(range(res.nodes_min, res.nodes + 1))
        self.node_refusals: dict[int, str] = {}
        if self.program is None:
            if res.is_range:
                self._check_range()
            else:
                self._check_trainer(res.world_size)
        if self.requeue.signal_lead_s >= res.time_s:
            raise Invalid("requeue.signal_lead_s",
                          f"expected less than the time limit ({res.time_s} s), got {self.requeue.signal_lead_s}")

    def _check_range(self) -> None:
        """Keep the counts of the node range on which the trainer can run; none: refused,
        naming valid counts nearby. The range's ends become the first and last valid count."""
        res, errors = self.resources, {}

        def runs(nodes: int) -> bool:
            try:
                self._check_trainer(nodes * res.tasks_per_node)
            except Invalid as exc:
                errors.setdefault(nodes, exc)
                return False
            return True

        self.node_counts = valid_counts(res.nodes_min, res.nodes, runs)
        self.node_refusals = {n: f"{exc.field}: {exc.message}" for n, exc in errors.items()}  # why not n nodes
        if not self.node_counts:
            first = errors[res.nodes]
            near = nearby(res.nodes_min, res.nodes, runs)
            hint = f"valid counts nearby: {', '.join(map(str, near))}" if near else "no valid count nearby"
            raise Invalid("resources.nodes", f"expected a range holding a node count the trainer can run on; none of "
                                             f"{res.nodes_directive} can ({res.nodes} nodes: {first.field}: "
                                             f"{first.message}); {hint}")
        res.nodes_min, res.nodes = self.node_counts[0], self.node_counts[-1]

    def _check_trainer(self, world_size: int) -> None:
        """The trainer's layout on ``world_size`` ranks (not for a ``program:`` job, which has none)."""
        try:
            layout = self.trainer.layout(world_size)
        except Invalid as exc:
            raise Invalid(f"trainer.{exc.field}", exc.message) from None
        if self.trainer.grad_compression != "none" and (layout.kind != "ddp" or self.trainer.sharding != "ddp"):
            # a DDP communication hook: FSDP, tp and pp reduce gradients their own way
            raise Invalid("trainer.grad_compression", f"expected none for the layout {layout.describe()}, sharding "
                                                      f"{self.trainer.sharding}: compression hooks into plain DDP only")
        if self.trainer.optimizer.name == "adafactor" and _dtensor_parameters(layout, self.trainer.sharding):
            raise Invalid("trainer.optimizer.name", f"expected adamw for the layout {layout.describe()}, sharding "
                                                    f"{self.trainer.sharding}: torch's Adafactor cannot update sharded "
                                                    f"(DTensor) parameters; adafactor runs under ddp and pp only")

    @property
    def layout(self) -> Layout:
        """The parallel layout on the job's own ranks (nodes x tasks per node; for a node
        range, on its most nodes, a valid count)."""
        return self.trainer.layout(self.resources.world_size)

    def layout_on(self, nodes: int) -> Layout:
        """The parallel layout on ``nodes`` nodes (one of :attr:`node_counts`)."""
        return self.trainer.layout(nodes * self.resources.tasks_per_node)

    @property
    def grad_accum(self) -> int:
        return self.layout.accumulation


def _dtensor_parameters(layout: Layout, sharding: str) -> bool:
    """Whether the trainer holds the parameters as DTensors: FSDP (also on one rank, when
    ``sharding`` says so), tensor parallelism, or data parallelism inside an nd layout."""
    if layout.tp > 1:
        return True
    if layout.kind == "nd":
        return layout.dp > 1
    return layout.kind == "fsdp" or (layout.dp == 1 and sharding == "fsdp")


def load_job(path: str | os.PathLike, overrides: list[str] | tuple = ()) -> JobSpec:
    """Load a job spec from a path, or a name (``gpt2-124m``: the user's jobs, then the shipped
    ones); ``overrides`` are ``KEY=VALUE`` strings applied before validation."""
    path, data = _job_data(path, overrides)
    try:
        return build(JobSpec, data, str(path))
    except ConfigError as exc:
        raise _blame_override(exc, path, overrides) from None


def resources_only(path: str | os.PathLike, overrides: list[str] | tuple = ()) -> JobSpec | None:
    """The job's name, resources, launch and placement with a trainer whose batch arithmetic
    always works (one sequence per rank): for checking what the site refuses before the
    batch arithmetic (a plan reports those first). None when even that does not load."""
    try:
        path, data = _job_data(path, overrides)
        keep = {k: data[k] for k in ("name", "resources", "launch", "placement", "health", "environment")
                if k in data}
        res = build(Resources, dict(keep.get("resources") or {}), str(path))
        keep["trainer"] = {"global_batch": res.world_size, "micro_batch": 1}
        if res.is_range:  # its most nodes: a batch that holds every count would be huge
            keep["resources"] = {**keep["resources"], "nodes": res.nodes}
        return build(JobSpec, keep, str(path))
    except ConfigError:
        return None


def _job_data(path: str | os.PathLike, overrides) -> tuple[Path, dict]:
    """The job file (or named job) as data, with the ``--set`` overrides applied."""
    text = str(path)
    if catalog.is_name(text) and not Path(text).exists():
        found = catalog.find("jobs", text)
        if found is None:
            raise ConfigError(f"job {text!r}", "", catalog.unknown("jobs", text))
        path = found
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a mapping at the top level, got {type(data).__name__}")
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError("--set", item, "expected KEY=VALUE, such as trainer.steps=50")
        set_dotted(data, key.strip(), value, f"{path} (--set {key.strip()})")
    if data.get("program") is not None and data.get("trainer") is not None:
        raise _blame_override(ConfigError(str(path), "program", "expected program or trainer, not both (a "
                                          "program job runs your own code, with no hpcorch trainer)"), path, overrides)
    return path, data


def job_to_dict(job: JobSpec) -> dict:
    """``job`` as plain data that :func:`load_job` reads back as the same job (a ``program:`` job
    without the trainer section it does not use, which the loader would refuse beside it)."""
    data = to_dict(job)
    data["resources"]["nodes"] = job.resources.nodes if not job.resources.is_range else job.resources.nodes_directive
    if job.program is not None:
        del data["trainer"]
    return data


def _blame_override(exc: ConfigError, path: Path, overrides) -> ConfigError:
    """An error at (or under) a key that ``--set`` gave names the ``--set``, not the file."""
    for item in reversed(list(overrides)):
        key = item.partition("=")[0].strip()
        if exc.key == key or exc.key.startswith((key + ".", key + "[")):
            return ConfigError(f"{path} (--set {key})", exc.key, exc.message)
    return exc


# logger -> (module imported, what to install)
PACKAGES = {"tensorboard": ("tensorboardX", "pip install 'hpcorch[tensorboard]' (tensorboardX)"),
            "wandb": ("wandb", "pip install 'hpcorch[wandb]' (wandb)")}


def check_available(loggers, source: str) -> None:
    """Raise one :class:`ConfigError` naming ``trainer.loggers`` if a logger's package is not
    installed here."""
    for name in loggers:
        module, install = PACKAGES[name]
        if find_spec(module) is None:
            raise ConfigError(source, "trainer.loggers", f"{name} needs the {module} package, which is not "
                                                         f"installed: {install}, or remove {name!r}")
