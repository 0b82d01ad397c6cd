"""The layering of docs/architecture.md, checked on the source: who may import whom, and no import loops."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "metrics", "data", "model", "bench", "paper")
SCRIPTS = ("sr", "infer", "eval")
# What each layer may import from the project; everything else in the project is off limits for it.
ALLOWED = {
    "core": {"core"},
    "metrics": {"core", "metrics"},
    "data": {"core", "data"},
    "model": {"core", "data", "metrics", "model"},
    "bench": {"core", "data", "metrics", "model", "bench"},
    "paper": {"core", "data", "metrics", "model", "paper"},
}
# Modules of model/ that make up the network and the diffusion process: they never see data/.
DATA_FREE = ("model.tmfa", "model.unet", "model.schedule", "model.samplers", "model.diffusion", "model.losses",
             "model.net_runner", "model.checkpoint_io", "model.model", "model.release", "model.residual")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)  # a package's __init__.py is the package


def project_imports(path: Path) -> set[str]:
    """The project modules (package.module or script) that the file at `path` imports, at any place in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            folder = ROOT.joinpath(*node.module.split("."))  # `from package import module` imports that module too
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names
                                    if (folder / f"{alias.name}.py").is_file())]
        for name in names:
            if name.split(".")[0] in PACKAGES + SCRIPTS:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]  # subpackages too (data/builders, ...)
    files += [ROOT / f"{s}.py" for s in SCRIPTS]
    return {_module_name(p): project_imports(p) for p in files}


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.split(".")[0] in ALLOWED))
def test_layer_imports_only_downward(module: str) -> None:
    layer = module.split(".")[0]
    upward = {i for i in GRAPH[module] if i.split(".")[0] not in ALLOWED[layer]}
    assert not upward, f"{module} imports {sorted(upward)}, above its layer (allowed: {sorted(ALLOWED[layer])})"


@pytest.mark.parametrize("module", DATA_FREE)
def test_network_and_diffusion_never_import_data(module: str) -> None:
    assert not {i for i in GRAPH[module] if i.startswith("data")}, GRAPH[module]


def test_samplers_are_built_from_a_schedule_not_from_the_diffusion_module() -> None:
    assert "model.diffusion" not in GRAPH["model.samplers"]
    assert "model.schedule" in GRAPH["model.samplers"]


def test_no_import_loops() -> None:
    def visit(node: str, trail: tuple[str, ...]) -> None:
        for nxt in GRAPH.get(node, ()):
            assert nxt not in trail, "import loop: " + " -> ".join((*trail, nxt))
            if nxt not in done:
                visit(nxt, (*trail, nxt))
        done.add(node)

    done: set[str] = set()
    for start in GRAPH:
        visit(start, (start,))


def test_the_checker_sees_imports() -> None:
    """The graph is not empty by accident: known edges are present."""
    assert "model.schedule" in GRAPH["model.diffusion"]
    assert "model.evaluation" in GRAPH["sr"]
    assert "data.builders.splits" in GRAPH["data.prepare_data"]  # subpackages are seen
    assert "metrics.scoring" in GRAPH["eval"] and "paper.records" in GRAPH["paper.experiments"]
