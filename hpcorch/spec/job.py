"""Job specs: what to train, with which resources, and how to survive interruptions."""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from hpcorch.errors import ConfigError
from hpcorch.spec import catalog, units
from hpcorch.spec.data import DataMix, DataSpec  # noqa: F401 - DataMix re-exported with DataSpec
from hpcorch.spec.expand import check_expandable
from hpcorch.spec.health import JobHealth
from hpcorch.spec.launch import Launch, check_directives
from hpcorch.spec.model import ModelConfig, default_model
from hpcorch.spec.noderange import nearby, parse_nodes, show, valid_counts
from hpcorch.spec.parallel import Layout, ParallelSpec, resolve_layout
from hpcorch.spec.placement import Placement
from hpcorch.spec.profile import check_constraint
from hpcorch.spec.program import ProgramSpec
from hpcorch.spec.schema import (
    KIND_DEFAULT,
    SLURM_MAX16,
    Invalid,
    build,
    check_account,
    check_at_most,
    check_env_names,
    check_name,
    check_positive,
    set_dotted,
    to_dict,
)
from hpcorch.spec.yamlio import read_yaml

MAX_MEMORY_MB = 2**40  # as a profile's node_types.*.memory_mb
MAX_TASKS_PER_NODE = 1024  # ranks per node: one per GPU or a few per CPU socket, far below this

# A typed GPU request as Slurm writes it: TYPE:COUNT (a40:4); TYPE is a GRES type name.
_TYPED_GPUS = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.+-]{0,127}):([0-9]{1,6})")


@dataclass
class Resources:
    """After validation ``gpus_per_node`` is an int and ``gpu_type`` a str or None, however
    the file wrote them (``gpus_per_node: a40:4`` or ``gpu_type: a40``), and ``nodes`` is an
    int, the most nodes the job asks for, with ``nodes_min`` the fewest (equal without a range:
    ``nodes: 4``; ``nodes: 2-4`` or ``{min: 2, max: 4}`` asks Slurm for ``--nodes=2-4``)."""

    nodes: int | str | dict[str, Any] = 1
    gpus_per_node: int | str = 0       # 4, or "a40:4" for a GRES type
    tasks_per_node: int | None = None  # default: one task per GPU, or 1 without GPUs
    cpus_per_task: int = 1
    # per node, Slurm form (4000, 4000M, 64G); 0 = the whole node; None = Slurm default
    mem: str | int | None = None
    mem_per_gpu: str | int | None = None  # Slurm form; instead of mem
    gpu_type: str | None = None        # the Slurm GRES type name (a40)
    exclusive: bool | None = None      # None: as the profile's requests.exclusive says
    time: str | int = 60               # Slurm form: 90, 2:00:00, 1-00:00:00
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None         # hostlist of nodes never to run on
    extra_directives: list[str] = field(default_factory=list)  # after the profile's and partition's

    def __post_init__(self):
        self._parse_gpus()
        check_directives("extra_directives", self.extra_directives)
        self.nodes_min, self.nodes = parse_nodes(self.nodes)
        check_positive(self, "cpus_per_task", "tasks_per_node")
        check_positive(self, "gpus_per_node", allow_zero=True)
        # #SBATCH counts within Slurm's ranges; ranks also become per-node lists.
        check_at_most(self, SLURM_MAX16, "Slurm's 16-bit per-node counts", "cpus_per_task", "gpus_per_node")
        check_at_most(self, MAX_TASKS_PER_NODE, "ranks per node", "tasks_per_node")
        if self.gpu_type is not None and not self.gpus_per_node:
            raise Invalid(self.gpu_type_key, f"expected GPUs with GPU type {self.gpu_type!r} (gpus_per_node is 0)")
        if self.tasks_per_node is None:
            self.tasks_per_node = max(self.gpus_per_node, 1)
        for key, value in (("partition", self.partition), ("qos", self.qos)):
            check_name(key, value, f"a {key} name")
        check_account("account", self.account)
        check_constraint("constraint", self.constraint)
        try:
            self.time_s = units.parse_time(self.time)
        except ValueError as exc:
            raise Invalid("time", str(exc)) from None
        if self.time_s is None:
            raise Invalid("time", "expected a finite time limit; requeue and signals need one")
        try:
            self.mem_mb = None if self.mem is None else _memory_mb(self.mem, whole_node=True)
        except ValueError as exc:
            raise Invalid("mem", str(exc)) from None
        try:
            self.mem_per_gpu_mb = None if self.mem_per_gpu is None else _memory_mb(self.mem_per_gpu)
        except ValueError as exc:
            raise Invalid("mem_per_gpu", str(exc)) from None
        for key, mb in (("mem", self.mem_mb), ("mem_per_gpu", self.mem_per_gpu_mb)):
            if mb is not None and mb > MAX_MEMORY_MB:
                raise Invalid(key, f"expected at most {MAX_MEMORY_MB} MB (an exabyte), got {mb} MB")
        if self.mem_per_gpu is not None:
            # Slurm refuses --mem with --mem-per-gpu, and a per-GPU size needs GPUs to multiply.
            if self.mem is not None:
                raise Invalid("mem_per_gpu", "expected mem or mem_per_gpu, not both (Slurm refuses the pair)")
            if not self.gpus_per_node:
                raise Invalid("mem_per_gpu", "expected GPUs to go with it (gpus_per_node is 0); use mem")
        try:
            self.exclude_hosts = [] if self.exclude is None else units.expand_hostlist(self.exclude)
        except ValueError as exc:
            raise Invalid("exclude", str(exc)) from None

    def _parse_gpus(self) -> None:
        """Split ``TYPE:N`` into ``gpu_type`` and an int ``gpus_per_node``; remember which key
        named the type, so that plan errors about it blame the key the user wrote."""
        check_name("gpu_type", self.gpu_type, "a GPU type (Slurm GRES type name)")
        self.gpu_type_key = "gpu_type"
        if not isinstance(self.gpus_per_node, str):
            return
        m = _TYPED_GPUS.fullmatch(self.gpus_per_node)
        if not m:
            raise Invalid("gpus_per_node",
                          f"expected a GPU count or TYPE:COUNT such as a40:4, got {self.gpus_per_node!r}")
        gpu_type, self.gpus_per_node = m[1], int(m[2])
        if self.gpu_type is not None and self.gpu_type != gpu_type:
            raise Invalid("gpu_type", f"{self.gpu_type!r} disagrees with gpus_per_node's type {gpu_type!r}; give one")
        if self.gpu_type is None:
            self.gpu_type_key = "gpus_per_node"
        self.gpu_type = gpu_type

    @property
    def world_size(self) -> int:
        """The ranks on the most nodes the job asks for (``nodes``)."""
        return self.nodes * self.tasks_per_node

    @property
    def is_range(self) -> bool:
        """Whether the job asks for a node range (Slurm picks the count at each start)."""
        return self.nodes_min < self.nodes

    @property
    def nodes_directive(self) -> str:
        """The value of ``#SBATCH --nodes=``: ``"4"``, or ``"2-4"`` for a range."""
        return show(self.nodes_min, self.nodes)


def _memory_mb(value: str | int, whole_node: bool = False) -> int:
    """MB in a Slurm memory size; with ``whole_node``, 0 (Slurm's --mem=0) is allowed and means all."""
    if whole_node and not isinstance(value, bool) and str(value).strip() == "0":
        return 0
    return units.parse_memory_mb(value)


@dataclass
class OptimizerSpec:
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
