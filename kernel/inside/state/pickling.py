"""Pickling a notebook's variables: by value for what the notebook defined, by reference
for what a module defines, and out of band for the big buffers.

Standard pickle stores a function or class by its import path; one a notebook defined lives
in `__main__` and would come back as whatever that name means at restore time (or nothing,
in a fresh kernel). Here those are stored by value (code, defaults, closure cells, class
dict), their globals being the live namespace. Objects that are another variable's value,
modules and numpy buffers leave the pickle as persistent ids: aliasing between variables
survives and a 200 MB array is hashed and stored in chunks, never pickled.
"""

from __future__ import annotations

import importlib
import io
import marshal
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

PROTOCOL = 5


def _empty_cell() -> types.CellType:
    return types.CellType()


def _cell_set(cell: types.CellType, state: tuple[bool, Any]) -> None:
    if state[0]:
        cell.cell_contents = state[1]


def _make_function(code: bytes, name: str, nfree: int, globals_: dict) -> types.FunctionType:
    closure = tuple(types.CellType() for _ in range(nfree)) or None
    return types.FunctionType(marshal.loads(code), globals_, name, None, closure)


def _function_set(fn: types.FunctionType, state: dict[str, Any]) -> None:
    for cell, src in zip(fn.__closure__ or (), state.pop("cells"), strict=True):
        _cell_set(cell, src)
    for attr in (
        "__defaults__",
        "__kwdefaults__",
        "__qualname__",
        "__module__",
        "__doc__",
        "__annotations__",
    ):
        if attr in state:
            setattr(fn, attr, state.pop(attr))
    fn.__dict__.update(state.pop("__dict__", {}))


def _make_class(name: str, bases: tuple, meta: type, kwds: dict) -> type:
    return types.new_class(name, bases, {"metaclass": meta, **kwds})


def _class_set(cls: type, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        setattr(cls, k, v)


def _cell_state(cell: types.CellType) -> tuple[bool, Any]:
    try:
        return (True, cell.cell_contents)
    except ValueError:
        return (False, None)


class NotebookPickler(pickle.Pickler):
    """A pickler whose persistent ids and by-value rules come from `ref` and `ns`.

    ref(obj) -> a persistent id or None (called for every object first);
    ns: the notebook's namespace (functions defined there keep it as their globals).
    """

    def __init__(
        self,
        file: io.BufferedIOBase,
        ns: dict,
        ref: Callable[[Any], Any],
        watch: set[int],
        array_type: Any = None,
    ) -> None:
        super().__init__(file, PROTOCOL)
        self._ns = ns
        ns_id = id(ns)

        def slow(obj: Any) -> Any:
            return ("ns",) if id(obj) == ns_id else ref(obj)

        # Called for every object pickled (ints and strs too): a closure with one set
        # lookup, not a method, so 100k small dicts cost ~1.5x a plain pickle, not ~3x.
        def persistent_id(
            obj: Any, _watch: set[int] = watch | {ns_id}, _id: Any = id, _type: Any = type
        ) -> Any:
            if _id(obj) in _watch or _type(obj) is array_type:
                return slow(obj)
            return None

        self.persistent_id = persistent_id

    def _ours(self, obj: Any) -> bool:
        """True when pickle could not find obj again by its import path (the notebook's own)."""
        mod = getattr(obj, "__module__", None)
        if mod == "__main__" or mod is None or sys.modules.get(mod) is None:
            return True
        found: Any = sys.modules[mod]
        for part in getattr(obj, "__qualname__", "<").split("."):
            found = getattr(found, part, None)
            if found is None:
                return True
        return found is not obj

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.ModuleType:
            return (importlib.import_module, (obj.__name__,))
        if t is types.FunctionType and (obj.__globals__ is self._ns or self._ours(obj)):
            code = obj.__code__
            state = {
                "cells": [_cell_state(c) for c in obj.__closure__ or ()],
                "__defaults__": obj.__defaults__,
                "__kwdefaults__": obj.__kwdefaults__,
                "__qualname__": obj.__qualname__,
                "__module__": obj.__module__,
                "__doc__": obj.__doc__,
                "__annotations__": obj.__annotations__,
                "__dict__": dict(obj.__dict__),
            }
            g = obj.__globals__ if obj.__globals__ is self._ns else {"__builtins__": __builtins__}
            args = (marshal.dumps(code), obj.__name__, len(code.co_freevars), g)
            return (_make_function, args, state, None, None, _function_set)
        if t is types.CellType:
            return (_empty_cell, (), _cell_state(obj), None, None, _cell_set)
        if t is classmethod or t is staticmethod:
            return (t, (obj.__func__,))
        if t is property:
            return (property, (obj.fget, obj.fset, obj.fdel, obj.__doc__))
        if isinstance(obj, type) and self._ours(obj):
            skip = {"__dict__", "__weakref__"}
            slots = obj.__dict__.get("__slots__")
            skip.update([slots] if isinstance(slots, str) else slots or ())
            attrs = {k: v for k, v in obj.__dict__.items() if k not in skip}
            return (
                _make_class,
                (obj.__name__, obj.__bases__, type(obj), {}),
                attrs,
                None,
                None,
                _class_set,
            )
        return NotImplemented


class NotebookUnpickler(pickle.Unpickler):
    """Unpickles what NotebookPickler wrote; `load_ref(pid)` answers the other ids."""

    def __init__(self, file: io.BufferedIOBase, ns: dict, load_ref: Callable[[Any], Any]) -> None:
        super().__init__(file)
        self._ns = ns
        self._load_ref = load_ref

    def persistent_load(self, pid: Any) -> Any:
        if pid == ("ns",):
            return self._ns
        if pid[0] == "mod":
            import importlib

            return importlib.import_module(pid[1])
        return self._load_ref(pid)


def dumps(
    obj: Any, ns: dict, ref: Callable[[Any], Any], watch: set[int], array_type: Any = None
) -> bytes:
    """obj pickled; ref(o) is asked only for objects whose id is in watch, or of array_type."""
    buf = io.BytesIO()
    NotebookPickler(buf, ns, ref, watch, array_type).dump(obj)
    return buf.getvalue()


def loads(data: bytes, ns: dict, load_ref: Callable[[Any], Any]) -> Any:
    return NotebookUnpickler(io.BytesIO(data), ns, load_ref).load()
