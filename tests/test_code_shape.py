"""Two rules of the house, checked on the source: no module imports another module's private (underscore)
name, and no hand-written function is longer than 60 lines (the generated kernels are not hand-written)."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LONGEST = 60


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, ast.Module]:
    files = [p for p in ROOT.rglob("*.py") if not {"tests", "kernels", ".venv", "build"} & set(p.relative_to(ROOT).parts)]
    return {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text()) for p in files}


def _private_imports(tree: ast.Module) -> set[str]:
    """Underscore names taken from a module of the package: ``from .x import _y`` and ``x._y`` of an imported module."""
    found, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("lazyflow")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add(alias.name)
                modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.add(node.attr)
    return found


def test_no_module_imports_another_modules_private_name():
    found = {(path, name) for path, tree in _sources().items() for name in _private_imports(tree)}
    assert not found, sorted(found)


def test_no_hand_written_function_is_longer_than_60_lines():
    long = {(path, node.name): node.end_lineno - node.lineno + 1 for path, tree in _sources().items()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST}
    assert not long, long


def test_the_checks_see_what_they_look_for():
    """Both checks find what they forbid (so a silent pass means something)."""
    tree = ast.parse("from .bench import _Runner\nfrom . import grids\ngrids._parse\nfrom lazyflow.errors import X\n")
    assert _private_imports(tree) == {"_Runner", "_parse"}
    assert "runtime/core/sampler.py" in _sources() and not any("kernels/" in p for p in _sources())
