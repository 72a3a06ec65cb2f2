"""The import graph of `mm` has no cycle: not at module level, and not through function-local imports either
(a local import may put off a heavy optional dependency, never hold a cycle apart). Read with `ast`, nothing run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mm

MM_DIR = Path(mm.__file__).resolve().parent


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package (a package is its __init__.py)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict) -> set[str]:
    """The package's modules an import statement loads (the closest enclosing module of each name)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        # `from pkg import sub` loads pkg.sub when it is a module, else it reads a name of pkg
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_graph(package_dir: Path, *, function_local: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it is imported (module level, `if TYPE_CHECKING:` blocks
    excluded), plus those its functions import when `function_local`."""
    modules = module_names(package_dir)
    graph = {}
    for module, path in modules.items():
        edges: set[str] = set()

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    for other in child.orelse:
                        visit(other, in_function)
                    continue
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)) and (function_local or not inner):
                    edges.update(_imported(child, module, path.name == "__init__.py", modules))
                visit(child, inner)

        visit(ast.parse(path.read_text(), str(path)), False)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read():
    """Known edges are found, so the checks below cannot pass on an empty graph."""
    graph = import_graph(MM_DIR)
    assert {"mm.checkpoint", "mm.vision"} <= graph["mm.model"]
    assert {"mm.builder", "mm.checkpoint", "mm.llava"} <= graph["mm.loading"]
    assert "mm.llava" not in graph["mm.export"] and "mm.llava" in import_graph(MM_DIR, function_local=True)["mm.export"]


def test_module_level_imports_have_no_cycle():
    cycle = find_cycle(import_graph(MM_DIR))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_function_local_imports_hold_no_cycle_apart():
    cycle = find_cycle(import_graph(MM_DIR, function_local=True))
    assert cycle is None, f"import cycle through function-local imports: {' -> '.join(cycle)}"


def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


@pytest.mark.parametrize("b_imports_a", [
    "from pkg import a\n",
    "import pkg.a\n",
    "from . import a\n",
    "from .a import thing\n",
    "from pkg.a import thing\n",
])
def test_a_synthetic_cycle_is_found(tmp_path, b_imports_a):
    package = _write_package(tmp_path, {"__init__.py": "", "a.py": "from pkg.sub import b\nthing = 1\n",
                                        "sub/__init__.py": "", "sub/b.py": b_imports_a.replace("from .", "from ..")})
    assert find_cycle(import_graph(package)) in (["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.sub.b", "pkg.a", "pkg.sub.b"])


def test_a_cycle_held_apart_by_a_local_import_is_found_only_with_local_imports(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nfrom pkg import b\nif TYPE_CHECKING:\n    from pkg import c\n",
        "b.py": "def load():\n    from pkg import a\n    return a\n",
        "c.py": "import pkg.a\n",
    })
    assert find_cycle(import_graph(package)) is None  # TYPE_CHECKING imports do not run
    assert find_cycle(import_graph(package, function_local=True)) == ["pkg.a", "pkg.b", "pkg.a"]
