"""The package's layering, checked on the import graph (lazy imports inside functions too)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpcorch"
ORCHESTRATION = ("hpcorch.spec.profile", "hpcorch.plan", "hpcorch.render", "hpcorch.cluster", "hpcorch.registry",
                 "hpcorch.submit", "hpcorch.service", "hpcorch.status", "hpcorch.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
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
    return {m for m in found if m.startswith("hpcorch")}


def modules(sub: str):
    return sorted((PACKAGE / sub).rglob("*.py"))


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", modules("spec"), ids=lambda p: p.name)
def test_spec_layer_is_a_leaf(path):
    outside = {m for m in imports(path) if not _within(m, ("hpcorch.spec", "hpcorch.errors"))}
    assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", modules("train"), ids=lambda p: p.name)
def test_trainer_never_imports_orchestration(path):
    bad = {m for m in imports(path) if _within(m, ORCHESTRATION)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("shared", ["rundir.py", "fileio.py", "protocol.py", "poll.py", "errors.py", "diskspace.py", "display.py"])
def test_modules_the_trainer_shares_stay_below_orchestration(shared):
    bad = {m for m in imports(PACKAGE / shared) if _within(m, ORCHESTRATION + ("hpcorch.train",))}
    assert not bad, f"{shared} imports {sorted(bad)}"


def test_the_graph_sees_lazy_imports():
    assert "hpcorch.cluster.slurm" in imports(PACKAGE / "submit" / "task.py")  # imported inside a function


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_a_monolith(path):
    assert len(path.read_text().splitlines()) <= 420
