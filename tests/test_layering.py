"""The import direction of the library, enforced: every module's imports (module level and inside functions)
point down the layers of ARCHITECTURE.md, never up, never sideways between independent packages, and no
cycle joins two packages. A violation names the file and the line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "reid"

# Bottom to top. Packages of one layer are independent of each other.
LAYERS = {
    "utils": 0,
    "config": 1,
    "data": 2, "modeling": 2, "solver": 2,
    "evaluation": 3,
    "engine": 4,
    "export": 5,  # deployment
    "experiments": 6,
    "cli": 7,  # the commands (tools/ only runs them)
}
ROOT = "__init__"  # reid/__init__.py, the package's facade, sits above everything

# Imports inside a function that are there for a reason other than a cycle (the layering makes cycle-dodging
# imports impossible anyway): file -> imported module -> why.
FUNCTION_LOCAL_ALLOWED = {
    "reid/__init__.py": {"reid.export.extractor": "reid.FeatureExtractor loads the deployment layer only when used"},
    "reid/cli/search.py": {"reid.export.search_vis": "drawing loads matplotlib; a plain search does not need it"},
}


def package_of(module: str) -> str | None:
    """``reid.data.loaders`` -> ``data``; the root package -> ROOT; not ours -> None."""
    parts = module.split(".")
    if parts[0] != "reid":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ROOT


def layer(package: str) -> int:
    return max(LAYERS.values()) + 1 if package == ROOT else LAYERS[package]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import statement of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = module.split(".")
                    if path.name != "__init__.py":
                        base = base[:-1]
                    base = base[:len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                # ``from reid import data`` imports the sub-package reid.data
                names = [f"{target}.{a.name}" if target == "reid" else target for a in child.names]
                found.extend((name, child.lineno, in_function) for name in names)
            visit(child, local)

    visit(tree, False)
    return found


def check_layering(root: Path) -> tuple[list[str], dict[tuple[str, str], str]]:
    """(violations, package edges with one example site) of the package under ``root``."""
    violations, edges = [], {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        here = package_of(module)
        where = path.relative_to(root.parent).as_posix()
        for target, line, in_function in imports_of(path, module):
            there = package_of(target)
            if there is None:
                continue
            site = f"{where}:{line}"
            if in_function and target.startswith("reid") and target not in FUNCTION_LOCAL_ALLOWED.get(where, {}):
                violations.append(f"{site}: function-local import of {target} (import it at the top; if it is "
                                  "there for import cost, list it in FUNCTION_LOCAL_ALLOWED with the reason)")
            if there == here:
                continue
            edges.setdefault((here, there), site)
            if layer(there) > layer(here):
                violations.append(f"{site}: reid.{here} (layer {layer(here)}) imports {target} from a higher "
                                  f"layer ({layer(there)})")
            elif layer(there) == layer(here):
                violations.append(f"{site}: reid.{here} imports {target}, a package of the same layer; they must "
                                  "stay independent")
    return violations, edges


def package_cycles(edges: dict[tuple[str, str], str]) -> list[str]:
    """Every elementary cycle between packages, as ``a -> b -> a (a.py:1, b.py:2)``."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    cycles, seen = [], set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, []):
            if nxt == path[0]:
                ring = path + [nxt]
                key = frozenset(ring)
                if key not in seen:
                    seen.add(key)
                    sites = ", ".join(edges[(x, y)] for x, y in zip(ring, ring[1:]))
                    cycles.append(f"{' -> '.join(ring)} ({sites})")
            elif nxt not in path and nxt > path[0]:
                walk(nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return cycles


def test_imports_point_down_the_layers():
    violations, edges = check_layering(PACKAGE)
    assert not violations, "\n".join(violations)
    assert not package_cycles(edges)


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), packages ^ set(LAYERS)


@pytest.fixture
def fake_package(tmp_path):
    """A package with the same layer names, to check that the checker catches what it must."""
    root = tmp_path / "reid"

    def write(relative: str, text: str) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(text)

    return root, write


def test_checker_names_an_upward_import_with_its_file_and_line(fake_package):
    root, write = fake_package
    write("data/loaders.py", "import os\n\nfrom reid.engine.trainer import Trainer\n")
    violations, _ = check_layering(root)
    assert violations == ["reid/data/loaders.py:3: reid.data (layer 2) imports reid.engine.trainer from a higher "
                          "layer (4)"]


def test_checker_finds_function_local_sideways_and_relative_imports(fake_package):
    root, write = fake_package
    write("evaluation/rank.py", "def f():\n    from reid.engine import run\n")
    write("modeling/model.py", "from ..data import loaders\n")
    violations, _ = check_layering(root)
    assert any(v.startswith("reid/evaluation/rank.py:2: function-local import of reid.engine") for v in violations)
    assert any(v.startswith("reid/evaluation/rank.py:2: reid.evaluation (layer 3) imports reid.engine")
               for v in violations)
    assert any(v.startswith("reid/modeling/model.py:1: reid.modeling imports reid.data, a package of the same layer")
               for v in violations)


def test_checker_reports_a_cycle_between_packages(fake_package):
    root, write = fake_package
    write("engine/hooks.py", "from reid.export import exporter\n")
    write("export/exporter.py", "from reid.engine import hooks\n")
    violations, edges = check_layering(root)
    assert package_cycles(edges) == ["engine -> export -> engine (reid/engine/hooks.py:1, reid/export/exporter.py:1)"]
