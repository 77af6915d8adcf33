"""Every library that the installed code imports is a dependency of the package, not only
of its test extra: otherwise the tests (which install the extra) cannot notice it missing
from a plain install. jsonschema was such a one (kernel/control.py validates requests)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ("runtime", "kernel", "extension")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside `try: ... except ImportError` (or a bare/Exception handler) is optional."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = [] if h.type is None else [n.id for n in ast.walk(h.type) if isinstance(n, ast.Name)]
                if not names or {"ImportError", "ModuleNotFoundError", "Exception"} & set(names):
                    return True
    return False


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> files that import it unconditionally."""
    found: dict[str, list[str]] = {}
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                if _optional(node, parents):
                    continue
                for mod in mods:
                    top = mod.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("cellbox", "__future__"):
                        continue
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_imported_libraries_are_declared_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    dists = packages_distributions()
    missing = {}
    for mod, files in third_party_imports().items():
        names = {_norm(d) for d in dists.get(mod, [mod])}
        if not names & declared:
            missing[mod] = sorted(set(files))
    assert not missing, f"imported but not in [project].dependencies: {missing}"
