"""Which variables a cell may have changed, read from its code (no pickling).

A cell can change the objects it names (`df["x"] = 1`, `rows.append(r)`) and, through
the functions it calls, the globals those functions name. Rebinding and deleting are
seen by identity anyway (capture.py); this adds the names a cell mutates in place.
Code that reaches an object by a path no name in the cell leads to (a module attribute,
an object's reference to another variable's object) is not seen: `%cellbox snapshot`
checks every variable, autosnap what this returns.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Iterable
from typing import Any


def names_in(source: str) -> set[str] | None:
    """Every name the code reads or binds; None when it does not parse (check everything)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            out.update(node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.alias):
            out.add((node.asname or node.name).split(".")[0])
    return out


def _code_names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _code_names(c)
    return out


def reachable(names: Iterable[str], ns: dict[str, Any]) -> set[str]:
    """names plus the globals of the namespace's functions (and methods) they lead to."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        value = ns.get(name)
        codes = []
        if isinstance(value, types.FunctionType) and value.__globals__ is ns:
            codes.append(value.__code__)
        elif isinstance(value, type):
            for attr in vars(value).values():
                f = getattr(attr, "__func__", attr)
                if isinstance(f, types.FunctionType) and f.__globals__ is ns:
                    codes.append(f.__code__)
        elif value is not None and not isinstance(value, types.ModuleType):
            cls = type(value)  # an instance of a notebook class: its methods' globals
            if cls.__module__ == "__main__":
                todo.append(cls.__name__)
        for code in codes:
            todo.extend(n for n in _code_names(code) if n in ns and n not in seen)
    return seen


def bound_in(source: str) -> set[str]:
    """The names the code binds at its top level (assignments, defs, imports, for targets)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.alias):
            out.add((node.asname or node.name).split(".")[0])
    return out
