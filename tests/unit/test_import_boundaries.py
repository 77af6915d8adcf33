"""The layering, read from the source: runtime/ (the engine) is below kernel/,
extension/ and hub/ (the Jupyter parts) and imports nothing from them; kernel/ and extension/ enter
the runtime through one door, `cellbox.runtime.engine` (and `cellbox.runtime.errors`).
Every import counts: at module level, inside functions, and inside code strings run in a
child (`python -c` probes), which a grep for `^import` misses."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "runtime": "cellbox.runtime",
    "kernel": "cellbox.kernel",
    "extension": "cellbox.extension",
    "hub": "cellbox.hub",
}


def module_name(path: Path) -> str:
    """cellbox.runtime.cli.main for runtime/cli/main.py (a package is its __init__)."""
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:-1]]
    if rel.stem != "__init__":
        parts.append(rel.stem)
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_in(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module an AST imports: `import a.b`, `from a import b` (as a.b, since b may
    be a module), relative imports resolved, and code in string constants parsed."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "import" in node.value
        ):
            try:
                inner = ast.parse(node.value)
            except SyntaxError:
                continue  # prose, or not Python
            yield from imports_in(inner, module, is_package)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return set(imports_in(tree, module_name(path), path.name == "__init__.py"))


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_walker_sees_function_level_relative_and_string_imports() -> None:
    code = (
        "def f():\n"
        "    from ..kernel import provisioner\n"
        "PROBE = 'import sys\\nfrom cellbox.extension.app import x\\n'\n"
    )
    got = set(imports_in(ast.parse(code), "cellbox.runtime.cli", is_package=False))
    assert "cellbox.kernel.provisioner" in got
    assert "cellbox.extension.app.x" in got


@pytest.mark.parametrize("path", sources("runtime"), ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_imports_no_jupyter_part(path: Path) -> None:
    bad = sorted(
        m
        for m in imports_of(path)
        if m.split(".")[:2] in (["cellbox", "kernel"], ["cellbox", "extension"], ["cellbox", "hub"])
    )
    assert not bad, (
        f"{path.relative_to(ROOT)} imports {bad}: runtime/ must not know kernel/ or extension/"
    )


DOORS = ("cellbox.runtime.engine", "cellbox.runtime.errors")


def _past_the_door(name: str) -> bool:
    inside = name == "cellbox.runtime" or name.startswith("cellbox.runtime.")
    return inside and not any(name == d or name.startswith(d + ".") for d in DOORS)


def test_the_door_check_tells_engine_names_from_runtime_internals() -> None:
    assert not _past_the_door("cellbox.runtime.engine.Engine")
    assert not _past_the_door("cellbox.runtime.errors.NotFound")
    assert _past_the_door("cellbox.runtime.state.write_json")
    assert _past_the_door("cellbox.runtime.engine_images.ImageOps")
    assert _past_the_door("cellbox.runtime.linux.syscalls")
    assert not _past_the_door("cellbox.kernel.containers")


@pytest.mark.parametrize(
    "path",
    sources("kernel") + sources("extension") + sources("hub"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_jupyter_parts_enter_the_runtime_only_through_the_engine(path: Path) -> None:
    bad = sorted(m for m in imports_of(path) if _past_the_door(m))
    assert not bad, (
        f"{path.relative_to(ROOT)} imports {bad}: kernel/ and extension/ use "
        "cellbox.runtime.engine and cellbox.runtime.errors only (export what they need there)"
    )


@pytest.mark.parametrize("path", sources("kernel/inside"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_container_side_imports_nothing_of_the_host(path: Path) -> None:
    """kernel/inside/ is all a kernel container has of cellbox: it cannot import the runtime
    or the host side of cellbox.kernel there (tests/jupyter/test_kernel_inside.py)."""
    bad = sorted(
        m
        for m in imports_of(path)
        if m.startswith("cellbox.") and not m.startswith("cellbox.kernel.inside.")
    )
    assert not bad, (
        f"{path.relative_to(ROOT)} imports {bad}: the container has only cellbox.kernel.inside"
    )
