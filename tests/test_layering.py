"""Imports run one way (read from the source with ast, nothing imported): suite's core imports neither backends nor
reports, only the orchestration modules import backends, only the CLI imports reports, reports never import
backends, and no module imports a framework at its top (a framework is imported inside the backend that uses it)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("suite", "backends", "reports")
FRAMEWORKS = {"torch", "tensorflow", "jax", "jaxlib", "keras", "tf_keras", "flax"}
# Modules that drive backends: the runner and its worker process, the CLI, and selfcheck (which times the torch
# backend beside torch.utils.benchmark in one process). Every other suite module is core (ops, catalog, timing, ...).
ORCHESTRATION = {"suite.runner", "suite.worker", "suite.cli", "suite.selfcheck", "suite.__main__", "suite.checking"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "suite.cli"
    target: str  # the imported module, e.g. "backends.base"
    line: int
    top: bool  # runs when the module is imported (not inside a function, not under `if TYPE_CHECKING:`)

    def __str__(self) -> str:
        return f"{self.module} imports {self.target} (line {self.line}{', at module top' if self.top else ''})"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def deferred(node: ast.AST) -> bool:
        """Code that does not run when the module is imported: function bodies, `if TYPE_CHECKING:` blocks."""
        return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
            isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(name, alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.append(Import(name, base, child.lineno, top))
                if not child.module:  # `from . import base`: the names are modules
                    found.extend(Import(name, f"{base}.{alias.name}", child.lineno, top) for alias in child.names)
            else:
                visit(child, top and not deferred(child))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return found


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}
CORE = {name for name in MODULES if name.startswith("suite.") and name not in ORCHESTRATION}
IMPORTS = [imp for path in MODULES.values() for imp in imports_of(path)]


def offending(importers, targets, top_only: bool = False) -> list[str]:
    return [str(imp) for imp in IMPORTS if importers(imp.module) and imp.target.split(".")[0] in targets
            and (imp.top or not top_only)]


def test_the_modules_are_found():
    named = {"suite.ops", "suite.catalog", "suite.timing", "suite.stats", "suite.results", "suite.reference",
             "suite.environment", "suite.variant"}
    assert named <= CORE and set(MODULES) >= ORCHESTRATION | {"backends.base", "reports.site"}
    assert any(imp.target == "backends" for imp in IMPORTS if imp.module == "suite.cli")  # the parser sees imports


def test_suite_core_imports_neither_backends_nor_reports_nor_a_framework():
    assert offending(lambda m: m in CORE, {"backends", "reports", *FRAMEWORKS}) == []


def test_only_the_orchestration_modules_import_backends():
    assert offending(lambda m: m.startswith("suite.") and m not in ORCHESTRATION, {"backends"}) == []


def test_only_the_cli_imports_reports():
    assert offending(lambda m: m.split(".")[0] in ("suite", "backends") and m != "suite.cli", {"reports"}) == []


def test_reports_never_import_backends():
    assert offending(lambda m: m.startswith("reports"), {"backends"}) == []


def test_no_framework_is_imported_at_module_top():
    assert offending(lambda m: True, FRAMEWORKS, top_only=True) == []


@pytest.mark.parametrize("source, expected", [
    ("import torch\n", ["torch"]),
    ("from jax import numpy\n", ["jax"]),
    ("def f():\n    import torch\n", []),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n", []),
    ("class A:\n    import tensorflow as tf\n", ["tensorflow"]),  # a class body runs at import
    ("try:\n    import jax\nexcept ImportError:\n    pass\n", ["jax"]),
])
def test_the_checker_tells_top_level_from_deferred_imports(tmp_path, monkeypatch, source, expected):
    path = REPO / "suite" / "_layering_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert [imp.target.split(".")[0] for imp in imports_of(path) if imp.top and imp.target != "typing"] == expected


def test_relative_imports_resolve_to_their_package(monkeypatch):
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: "from . import base\nfrom .base import X\n")
    targets = {imp.target for imp in imports_of(REPO / "backends" / "torch_backend.py")}
    assert {"backends", "backends.base"} <= targets
