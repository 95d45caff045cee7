"""The package's shape: rooms by responsibility, no import cycles, a public surface that says so, a true map.

The import graph is read from the source (module-level, ``TYPE_CHECKING`` and function-level imports
alike), so a cycle hidden behind a function-level import is still a cycle here. ``testing/`` (the
local GLM server) is left out: it is a program of its own that imports the package's wire models.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "airflow_provider_glm"
ROOT = "airflow_provider_glm"
MAX_TOP_MODULES = 12
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts}


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement names (``from pkg import sub`` names ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == ROOT]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    if base.split(".")[0] != ROOT:
        return []
    named = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return named if len(named) == len(node.names) else [base, *named]


def _imports(module: str) -> list[tuple[str, ast.stmt, bool]]:
    """``(target, node, in_function)`` for every import of a package module in ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[tuple[str, ast.stmt, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, child, in_function) for target in _resolve(module, child))
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


GRAPH = {module: {target for target, _, _ in _imports(module) if target in MODULES and target != module}
         for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_graph_is_read_from_the_code() -> None:
    # guards the reader itself: these edges exist, one of them only inside a function
    assert "airflow_provider_glm.rows._plan" in GRAPH["airflow_provider_glm.operators.base"]
    assert "airflow_provider_glm.client._calls" in GRAPH["airflow_provider_glm.rows._batch_jobs"]
    assert "airflow_provider_glm.plugins._app" in GRAPH["airflow_provider_glm.plugins.spend"]


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_few_modules_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not any(p.startswith("_") for p in m.split(".")[1:])))
def test_public_modules_declare_all(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    assert "__all__" in names, f"{module} is public (no leading underscore) but has no __all__"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by responsibility"


def test_function_level_imports_say_why() -> None:
    """A function-level import of the package is there to keep an import cheap, and says so."""
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for _, node, in_function in _imports(module):
            if not in_function:
                continue
            span = lines[node.lineno - 1: node.end_lineno or node.lineno]
            above = node.lineno - 2
            while above >= 0 and re.match(r"\s*(from \S+ import |import |#)", lines[above]):
                span.append(lines[above])
                above -= 1
            if not any("# lazy" in line for line in span):
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert unexplained == [], "function-level imports without a '# lazy: <reason>' comment"


def _doc_module_refs(text: str) -> set[str]:
    """Module paths named in the map: ``rows/_plan.py``-style paths and ``airflow_provider_glm.x`` names."""
    refs = {m for m in re.findall(r"`([\w/]+\.py)`", text)}
    refs |= {m for m in re.findall(r"`([\w]+/)`", text)}
    refs |= {m for m in re.findall(r"\b(airflow_provider_glm(?:\.\w+)+)", text)}
    return refs


def _exists(ref: str) -> bool:
    if ref.startswith(f"{ROOT}."):
        parts = ref.split(".")
        while len(parts) > 1:
            path = REPO.joinpath(*parts)
            if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
                return True
            parts = parts[:-1]  # a name inside a module: airflow_provider_glm.hooks.glm.GLMHook
        return False
    if (REPO / ref).exists():
        return True
    # a path inside the package, whole (rows/_plan.py) or within its room's row of the table (_plan.py)
    return any(p.relative_to(PACKAGE).as_posix().endswith(ref.rstrip("/")) for p in PACKAGE.rglob("*")
               if p.name != "__pycache__" and "__pycache__" not in p.parts)


def test_architecture_map_names_only_modules_that_exist() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    refs = _doc_module_refs(text)
    assert len(refs) > 30, "the map should name the modules it describes"
    assert sorted(ref for ref in refs if not _exists(ref)) == []


def test_architecture_map_covers_every_room() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rooms = sorted({p.parent.relative_to(PACKAGE).as_posix() + "/" for p in PACKAGE.rglob("__init__.py")
                    if p.parent != PACKAGE})
    assert [room for room in rooms if f"`{room}`" not in text] == []
