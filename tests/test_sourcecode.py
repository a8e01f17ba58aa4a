"""The house rules, checked: the import direction of docs/architecture.md, and a
docstring at the top of every module saying what lives there, for the Python modules
and the Cython ones (``.pyx``, whose ``cimport``s count as imports).

Imports under ``if TYPE_CHECKING:`` are for types only and do not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastgw"

# module (or package prefix) -> the fastgw modules it may import. "_core" means fastgw._core.*
ALLOWED: dict[str, set[str]] = {
    "_core": set(),
    "errors": set(),
    "exchange": {"_core"},
    "config": {"errors", "_core", "policy", "policies", "plugin", "tls"},
    "tls": set(),
    "plugin": {"policy", "exchange", "errors"},
    "examples": {"plugin"},
    "logs": set(),
    "metrics": {"_core"},
    "socket_writes": set(),
    "upstream": {"errors", "exchange", "socket_writes", "_core"},
    "plan": {"upstream", "policy", "_core"},
    "snapshot": {"config", "errors", "plan", "upstream", "policy", "policies", "cluster", "_core"},
    "proxy": {"errors", "exchange", "plan", "upstream", "policy", "_core"},
    "policy": {"exchange", "_core"},
    "policies": {"policy", "exchange", "errors", "_core"},
    "cluster": {"_core"},
    "health": {"_core"},
    "protocols": {"proxy", "exchange", "errors", "socket_writes", "_core", "protocols", "websocket_registry"},
    "websocket_registry": set(),
    "aggregate": {"proxy", "exchange", "config", "errors"},
    "runtime": {"websocket_registry"},
    "admin": {"config", "snapshot", "errors", "runtime", "websocket_registry", "logs", "metrics"},
    "server": {"*"},
    "cli": {"*"},
    "demo": {"server"},
    "dump": {"config", "policies"},
    "__init__": set(),
    "__main__": {"cli"},
}


def modules() -> list[Path]:
    """Every source module: Python and Cython (a .pxd only declares its .pyx)."""
    return sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.pyx")])


def owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def fastgw_imports(tree: ast.Module) -> set[str]:
    """First component after ``fastgw.`` of every runtime import."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("fastgw."):
                        found.add(alias.name.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "fastgw":
                    found.update(a.name for a in node.names)
                elif node.module.startswith("fastgw."):
                    found.add(node.module.split(".")[1])
            for field in ("body", "orelse", "finalbody", "handlers"):
                child = getattr(node, field, None)
                if isinstance(child, list):
                    visit([c for c in child if isinstance(c, ast.stmt)] +
                          [s for h in child if isinstance(h, ast.ExceptHandler) for s in h.body])

    visit(tree.body)
    return found


_CYTHON_IMPORT = re.compile(r"^\s*(?:from|import|cimport)\s+fastgw\.(\w+)", re.MULTILINE)


def cython_imports(text: str) -> set[str]:
    """First component after ``fastgw.`` of every import and cimport of a .pyx file
    (Cython is not Python to ``ast``; its imports are one per line in this house)."""
    return set(_CYTHON_IMPORT.findall(text))


def cython_docstring(text: str) -> str | None:
    """The docstring of a .pyx file: its first string, after the directive comments."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    match = re.match(r'\s*"""(.*?)"""', body, re.DOTALL)
    return match.group(1) if match else None


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_direction(path):
    name = owner(path)
    assert name in ALLOWED, f"{name}: add it to ALLOWED (and to docs/architecture.md)"
    allowed = ALLOWED[name]
    if "*" in allowed:
        return
    text = path.read_text()
    found = cython_imports(text) if path.suffix == ".pyx" else fastgw_imports(ast.parse(text))
    imported = found - {"__version__"}
    imported.discard(name)  # a package importing its own modules
    forbidden = imported - allowed
    assert not forbidden, f"{path.relative_to(PACKAGE)} imports {sorted(forbidden)}; allowed: {sorted(allowed)}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_has_a_docstring(path):
    text = path.read_text()
    doc = cython_docstring(text) if path.suffix == ".pyx" else ast.get_docstring(ast.parse(text))
    assert doc and len(doc) > 20, f"{path.relative_to(PACKAGE)} has no module docstring"


def test_import_checker_sees_violations():
    """The checker itself must be able to fail."""
    tree = ast.parse("import os\nfrom fastgw.server import x\nif TYPE_CHECKING:\n    from fastgw.cli import y\n"
                     "try:\n    import fastgw.config\nexcept ImportError:\n    from fastgw import upstream\n")
    assert fastgw_imports(tree) == {"server", "config", "upstream"}
    pyx = ("# cython: boundscheck=True\nfrom fastgw.exchange cimport Exchange\nimport fastgw.errors\n"
           "    from fastgw.server import Worker\nx = 'from fastgw.cli import y'\n")
    assert cython_imports(pyx) == {"exchange", "errors", "server"}
    assert cython_docstring('# cython: x\n"""A docstring."""\n') == "A docstring."
    assert cython_docstring("# cython: x\nimport os\n") is None
