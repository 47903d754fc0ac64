"""The package's architecture, checked on the import graph (lazy imports inside functions too).

``ls hpcorch`` is the pipeline: each stage is a folder, and a folder may import only the folders
on floors below its own (:data:`FLOORS`, top to bottom). So there is no import cycle, the spec
layer is a leaf, the trainer imports no orchestration, and a new module has one obvious home.
"""
import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hpcorch"

# Top to bottom: a unit may import units on lower floors (and itself), never a higher floor or a
# peer on its own floor.
FLOORS = [
    ["cli"],                   # the face: click, tables, options
    ["service"],               # the Python API every command goes through
    ["remote"],                # the SSH backend: runs the service on a login node
    ["submit", "render"],      # backends that hand a job to a scheduler; Plan -> sbatch text
    ["observe", "plan"],       # reading run directories and the scheduler; job x profile -> Plan
    ["batch"],                 # what the sbatch script runs on the allocation
    ["train"],                 # the trainer (torch)
    ["data"],                  # tokenizers, token shards, dataset indexes, corpus preparation
    ["runtime"],               # what a user's own program (``program:``) sees: its env, its reports
    ["protocol"],              # the stop/requeue contract batch/ and train/ share
    ["state"],                 # the registry, run directories, whether a job runs
    ["cluster"],               # the Slurm adapter and the dev cluster
    ["spec", "util"],          # the job and profile schema; small helpers
    ["errors", "__init__"],    # ``hpcorch.__version__``
]
ENTRY_POINTS = {"__main__"}
# Old module paths that rendered scripts and pickled tasks name; one release, then removed.
SHIMS = {"hpcorch.recovery", "hpcorch.health", "hpcorch.health.__main__", "hpcorch.submit.task"}
TOP_LEVEL_FILES_MAX = 6


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def imports(path: Path) -> frozenset[str]:
    """Every hpcorch module ``path`` imports, at module level or inside functions."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from . import units`
    known = all_modules()
    return frozenset(m for m in found if m in known)


def unit(module: str) -> str:
    """The floor unit of a module: its folder under hpcorch (or the top-level module's name)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor_of(name: str) -> int | None:
    return next((i for i, units in enumerate(FLOORS) if name in units), None)


@functools.cache
def graph() -> dict[str, set[str]]:
    return {name: imports(path) - {name} for name, path in all_modules().items()}


def test_every_folder_has_a_floor():
    units = {unit(m) for m in all_modules() if m not in SHIMS} - ENTRY_POINTS
    assert {u for u in units if floor_of(u) is None} == set()


def test_no_module_imports_a_higher_floor_or_a_peer_stage():
    bad = []
    for name, deps in graph().items():
        if name in SHIMS or unit(name) in ENTRY_POINTS:
            continue
        mine = floor_of(unit(name))
        for dep in deps:
            if unit(dep) == unit(name) or dep in SHIMS:
                continue
            theirs = floor_of(unit(dep))
            if theirs is None or theirs <= mine:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports against the floors:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_lazy_imports_included():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            # a package's __init__ importing its own submodules (re-exports) is no cycle of logic
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "spec").rglob("*.py")), ids=lambda p: p.name)
def test_spec_layer_is_a_leaf(path):
    outside = {m for m in imports(path) if unit(m) not in ("spec", "errors")}
    assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "train").rglob("*.py")), ids=lambda p: p.name)
def test_trainer_never_imports_orchestration(path):
    allowed = {"train", "data", "protocol", "state", "spec", "util", "errors", "__init__"}
    bad = {m for m in imports(path) if unit(m) not in allowed or m == "hpcorch.state.registry"}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_click_lives_only_in_the_cli():
    users = [name for name, path in all_modules().items()
             if unit(name) != "cli" and any(
                 isinstance(n, (ast.Import, ast.ImportFrom)) and (
                     (isinstance(n, ast.Import) and any(a.name == "click" for a in n.names))
                     or (isinstance(n, ast.ImportFrom) and n.module == "click"))
                 for n in ast.walk(ast.parse(path.read_text())))]
    assert users == []


# What the CLI may import beside hpcorch.service*, hpcorch.errors, hpcorch.cli.* and the package
# root; each with why. Everything else goes through the service.
CLI_MAY_IMPORT = {
    # the views' number formatting; the trainer's console log shares it, so it is no CLI module
    "hpcorch.cli.views": {"hpcorch.util.display"},
    # shell completion runs on every <TAB>: it reads the catalog's folders and the registry file
    # directly, without importing the service (and the planner with it)
    "hpcorch.cli.completion": {"hpcorch.spec.catalog", "hpcorch.state.registry"},
    # the class cache must be installed before any module defines its dataclasses
    "hpcorch.cli.main": {"hpcorch.spec", "hpcorch.spec.classcache"},
}


def test_the_cli_goes_through_the_service():
    """The CLI parses, calls :mod:`hpcorch.service` and prints: no domain module of its own."""
    def through_service(dep: str) -> bool:
        return unit(dep) in ("cli", "service", "errors", "__init__")

    bad = [f"{name} -> {dep}" for name, deps in graph().items() if unit(name) == "cli"
           for dep in deps if not through_service(dep) and dep not in CLI_MAY_IMPORT.get(name, ())]
    assert not bad, "the CLI imports past the service:\n" + "\n".join(sorted(bad))


def test_the_top_level_is_small():
    files = sorted(p.stem for p in PACKAGE.glob("*.py") if module_name(p) not in SHIMS)
    assert len(files) <= TOP_LEVEL_FILES_MAX, files


def test_the_graph_sees_lazy_imports():
    assert "hpcorch.cluster.slurm" in imports(PACKAGE / "state" / "jobstate.py")
    assert "hpcorch.batch.health.criteria" in imports(PACKAGE / "plan" / "plan.py")  # inside a function


# Each family's own names: its module, config and arithmetic classes. They may be named only in
# the family's folder, the registry of families and the configs in spec/.
FAMILY_NAMES = {"gpt": {"GPT", "GPTConfig", "GPTShapes"}, "llama": {"Llama", "LlamaConfig", "LlamaShapes"}}
GPT_NAMES = FAMILY_NAMES["gpt"]
REGISTRY = "hpcorch.train.models"


def homes(family: str) -> tuple[str, str]:
    return (f"hpcorch.train.models.{family}", "hpcorch.spec.model")


def gpt_uses(text: str, deps: set[str], family: str = "gpt") -> list[str]:
    """The code (not the docstrings) of a module (``text``, importing ``deps``) that names a
    family: its classes, or an import of anything in its folder."""
    names, folder = FAMILY_NAMES[family], homes(family)[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Name) and node.id in names:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.append(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found += [a.name for a in node.names if a.name.split(".")[-1] in names]
    return found + sorted(m for m in deps if m == folder or m.startswith(folder + "."))


@pytest.mark.parametrize("family", sorted(FAMILY_NAMES))
def test_no_other_module_names_the_gpt_class(family):
    """The model seam: a family is named only in its own folder, the registry of models and
    its config in spec/; every other module reaches it through ``trainer.model.kind``."""
    users = {name: gpt_uses(path.read_text(), imports(path), family) for name, path in all_modules().items()
             if not name.startswith(homes(family)) and name != REGISTRY}
    assert {name: uses for name, uses in users.items() if uses} == {}


def test_the_gpt_check_sees_a_use():
    text = "from hpcorch.train.models.gpt.model import GPT\nm = GPT(cfg)\n"
    assert gpt_uses(text, {"hpcorch.train.models.gpt.model"}) == ["GPT", "GPT", "hpcorch.train.models.gpt.model"]
    assert gpt_uses('"""A GPT-style decoder (docstrings may say GPT)."""\nx = models.GPTConfig\n', set()) \
        == ["GPTConfig"]
    assert gpt_uses("from hpcorch.train.models.gpt import shapes\n", {"hpcorch.train.models.gpt.shapes"}) \
        == ["hpcorch.train.models.gpt.shapes"]
    assert gpt_uses("from hpcorch.train.models.llama.model import Llama\n", {"hpcorch.train.models.llama.model"},
                    "llama") == ["Llama", "hpcorch.train.models.llama.model"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_a_monolith(path):
    assert len(path.read_text().splitlines()) <= 450


def test_the_planner_reaches_the_trainer_only_through_the_registry_of_models():
    """plan/ is torch-free: of train/ it may import only the registry, whose families' torch-free
    halves (``shapes``) it reads; the torch halves load on demand (ModelSpec.parts)."""
    reached = {dep for name, deps in graph().items() if unit(name) == "plan" for dep in deps if unit(dep) == "train"}
    assert reached == {"hpcorch.train.models"}
