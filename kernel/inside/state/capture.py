"""Capture a notebook's namespace into the state store, incrementally, and bring it back.

Every distinct object bound to a variable is one record: its pickle (pickling.py), the
other variables' objects it contains (persistent ids, so two names for one object, or a
list holding another variable, restore as one object) and the numpy buffers it uses
(stored by content in chunks; a view keeps its base, offset and strides). Objects whose
references form a cycle are pickled together.

Incremental: a capture re-pickles only the objects of the names it is told may have
changed (`candidates`: what the cell named, see cells.py), plus every name rebound or new
since the last capture (an identity check over the namespace: no pickling). Arrays are
re-hashed chunk by chunk only when a record that uses them is re-pickled; a changed
chunk is the only one written again. Everything else reuses the last record.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable
from typing import Any

from . import pickling
from .store import CHUNK, Store, digest

ARRAY_MIN = 64 << 10  # numpy buffers from this size leave the pickle (chunks, aliasing kept)
_ATOMIC = (int, float, complex, str, bytes, bool, type(None), range, type(Ellipsis))


class StateError(Exception):
    """A capture or restore that cannot be done; the message is one line for the user."""


def _key(obj: Any) -> str:
    return f"{id(obj):x}"


def _type_name(obj: Any) -> str:
    t = type(obj)
    return (
        t.__qualname__
        if t.__module__ in ("builtins", "__main__")
        else f"{t.__module__}.{t.__qualname__}"
    )


def _np() -> Any:
    return sys.modules.get("numpy")


def _array_root(arr: Any, np: Any) -> Any:
    """The ndarray that owns arr's memory (arr itself when its base is not an ndarray)."""
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root


class _Group:
    """One pickled record: its member objects (one, or a reference cycle), its chunk."""

    __slots__ = ("members", "h", "refs", "arrays", "size")

    def __init__(
        self, members: list[Any], h: str, refs: set[str], arrays: set[str], size: int
    ) -> None:
        self.members, self.h, self.refs, self.arrays, self.size = members, h, refs, arrays, size


class Namespace:
    """The state of one namespace dict: capture into `store`, restore from it.

    hidden: names that are not the user's (IPython's own: In, Out, get_ipython, ...).
    """

    def __init__(self, ns: dict, store: Store, hidden: Callable[[], Iterable[str]] = tuple) -> None:
        self.ns = ns
        self.store = store
        self.hidden = hidden
        self._groups: dict[int, _Group] = {}  # id(member) -> its group, from the last capture
        self._arrays: dict[int, tuple[Any, dict]] = {}  # id(root array) -> (root, meta)
        self._ids: dict[str, int] = {}  # name -> id(value) at the last capture
        self._bad: dict[int, tuple[Any, dict]] = {}  # id -> (object, why) of what did not pickle
        self.last: dict[str, Any] | None = None
        self.lock = threading.RLock()
        self.stats: dict[str, Any] = {}

    def forget_unbound(self) -> None:
        """Drop the cache's hold on objects no variable holds any more (a `del big` frees
        its 200 MB now, not at the next capture)."""
        with self.lock:
            bound = {id(v) for v in self.ns.values()}
            self._groups = {
                oid: g for oid, g in self._groups.items() if all(id(m) in bound for m in g.members)
            }
            self._bad = {oid: b for oid, b in self._bad.items() if oid in bound}
            used = {int(a[1:], 16) for g in self._groups.values() for a in g.arrays}
            self._arrays = {oid: a for oid, a in self._arrays.items() if oid in used}

    # ------------------------------------------------------------ what the user has

    def variables(self) -> dict[str, Any]:
        hidden = set(self.hidden())
        out = {}
        for name, value in self.ns.items():
            if name.startswith("_") or name in hidden:
                continue
            out[name] = value
        return out

    # ------------------------------------------------------------ capture

    def capture(
        self, candidates: Iterable[str] | None = None, origin: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Write the namespace's state; its manifest (with "id"). candidates None: all names.

        origin: name -> the source of the cell that last bound it (offered for replay when
        the value does not pickle).
        """
        with self.lock:
            t0 = time.perf_counter()
            written0 = self.store.written
            manifest = self._capture(None if candidates is None else set(candidates), origin or {})
            self.store.save_state(manifest)
            self.last = manifest
            self.stats = {
                "seconds": time.perf_counter() - t0,
                "written": self.store.written - written0,
                "pickled": manifest.pop("_pickled"),
            }
            return manifest

    def _capture(self, candidates: set[str] | None, origin: dict[str, str]) -> dict[str, Any]:
        np = _np()
        vars_ = self.variables()
        modules: dict[str, str] = {}
        names: dict[str, str] = {}
        top: dict[int, Any] = {}
        for name, value in vars_.items():
            if isinstance(value, types.ModuleType):
                modules[name] = value.__name__
                continue
            names[name] = _key(value)
            top[id(value)] = value
        # what must be pickled again
        dirty: set[int] = set()
        for name, value in vars_.items():
            if name in modules:
                continue
            if candidates is None or name in candidates or self._ids.get(name) != id(value):
                dirty.add(id(value))
        for oid in top:
            g = self._groups.get(oid)
            if g is None and oid in self._bad and self._bad[oid][0] is top[oid]:
                continue  # did not pickle last time; tried again when a cell names it
            if g is None or any(m is not top.get(id(m)) for m in g.members):
                dirty.add(oid)
            elif any(int(r, 16) not in top for r in g.refs):
                dirty.update(
                    id(m) for m in g.members
                )  # a record it points at is no longer a variable
        groups: dict[int, _Group] = {}
        for oid in top:
            if oid not in dirty and oid in self._groups:
                groups[oid] = self._groups[oid]
        unpicklable: dict[str, dict] = {}
        fresh_arrays: set[int] = set()
        pickled = 0
        # one record per dirty object; cycles are merged below
        for oid in sorted(dirty | set(self._bad)):
            if oid in groups or oid not in top:
                continue
            if oid not in dirty and self._bad[oid][0] is top[oid]:  # still the one that failed
                for name, value in vars_.items():
                    if value is top[oid]:
                        unpicklable[name] = dict(self._bad[oid][1])
                continue
            try:
                groups[oid] = self._pickle([top[oid]], top, np, fresh_arrays)
                pickled += 1
            except Exception as e:  # noqa: BLE001 - any failure to pickle: named, never lost silently
                groups.pop(oid, None)
                for name, value in vars_.items():
                    if id(value) == oid:
                        unpicklable[name] = {
                            "type": _type_name(value),
                            "error": f"{e.__class__.__name__}: {e}"[:300],
                        }
        pickled += self._merge_cycles(groups, top, np, fresh_arrays)
        # a record that points at an unpicklable one cannot come back either
        bad = {oid for oid in top if oid not in groups}
        changed = True
        while changed:
            changed = False
            for g in list(groups.values()):
                if any(int(r, 16) in bad for r in g.refs):
                    for m in g.members:
                        groups.pop(id(m), None)
                        bad.add(id(m))
                    changed = True
        for name, value in vars_.items():
            if name not in modules and id(value) in bad and name not in unpicklable:
                unpicklable[name] = {
                    "type": _type_name(value),
                    "error": "it holds a variable that does not pickle",
                }
        for name in unpicklable:
            names.pop(name, None)
            if name in origin:
                unpicklable[name]["cell"] = origin[name]
        # the manifest
        arrays_used: set[str] = set()
        records: dict[str, dict] = {}
        for g in {id(g): g for g in groups.values()}.values():
            gid = _key(g.members[0])
            records[gid] = {
                "h": g.h,
                "m": [_key(m) for m in g.members],
                "r": sorted(g.refs),
                "a": sorted(g.arrays),
            }
            arrays_used |= g.arrays
        arrays = {}
        for akey in arrays_used:
            root, meta = self._arrays[int(akey[1:], 16)]
            arrays[akey] = meta
        self._groups = groups
        self._bad = {}
        for name, info in unpicklable.items():
            if name in vars_ and id(vars_[name]) not in groups:
                self._bad[id(vars_[name])] = (
                    vars_[name],
                    {k: v for k, v in info.items() if k != "cell"},
                )
        self._arrays = {int(a[1:], 16): self._arrays[int(a[1:], 16)] for a in arrays_used}
        self._ids = {n: id(v) for n, v in vars_.items()}
        return {
            "created": time.time(),
            "names": names,
            "records": records,
            "arrays": arrays,
            "modules": modules,
            "unpicklable": unpicklable,
            "_pickled": pickled,
        }

    def _pickle(self, members: list[Any], top: dict[int, Any], np: Any, fresh: set[int]) -> _Group:
        own = {id(m) for m in members}
        refs: set[str] = set()
        arrays: set[str] = set()

        def ref(obj: Any) -> Any:
            if np is not None and type(obj) is np.ndarray and not obj.dtype.hasobject:
                root = _array_root(obj, np)
                if root.nbytes >= ARRAY_MIN and (
                    root.flags.c_contiguous or root.flags.f_contiguous
                ):
                    akey = f"a{id(root):x}"
                    if id(root) not in fresh:
                        self._arrays[id(root)] = (root, self._store_array(root, np))
                        fresh.add(id(root))
                    arrays.add(akey)
                    offset = (
                        obj.__array_interface__["data"][0] - root.__array_interface__["data"][0]
                    )
                    if obj is root:
                        return ("nd", akey)
                    return (
                        "nd",
                        akey,
                        np.lib.format.dtype_to_descr(obj.dtype),
                        obj.shape,
                        obj.strides,
                        offset,
                    )
            oid = id(obj)
            if oid in own or oid not in top or isinstance(obj, _ATOMIC):
                return None
            refs.add(_key(obj))
            return ("var", _key(obj))

        watch = {oid for oid, v in top.items() if not isinstance(v, _ATOMIC)} - own
        value = members[0] if len(members) == 1 else tuple(members)
        data = pickling.dumps(value, self.ns, ref, watch, np.ndarray if np is not None else None)
        h = self.store.put(data)
        return _Group(list(members), h, refs, arrays, len(data))

    def _store_array(self, root: Any, np: Any) -> dict[str, Any]:
        """Hash the array's buffer chunk by chunk and store the chunks not stored yet."""
        order = "C" if root.flags.c_contiguous else "F"
        mv = memoryview(root.reshape(-1, order="A").view(np.uint8))
        chunks = []
        for start in range(0, len(mv), CHUNK):
            piece = mv[start : start + CHUNK]
            h = digest(piece)
            if not self.store.has(h):
                self.store.put(piece, h)
            chunks.append(h)
        return {
            "dtype": np.lib.format.dtype_to_descr(root.dtype),
            "shape": list(root.shape),
            "order": order,
            "nbytes": root.nbytes,
            "chunks": chunks,
        }

    def _merge_cycles(
        self, groups: dict[int, _Group], top: dict[int, Any], np: Any, fresh: set[int]
    ) -> int:
        """Pickle objects whose records point at each other (a cycle) as one record."""
        graph = {oid: {int(r, 16) for r in g.refs} for oid, g in groups.items()}
        sccs = []
        for comp in _sccs(graph):
            g = groups[comp[0]]
            if len(comp) > 1 and not (
                len(g.members) == len(comp) and all(groups[o] is g for o in comp)
            ):
                sccs.append(comp)
        for comp in sccs:
            members = [top[o] for o in sorted(comp)]
            g = self._pickle(members, top, np, fresh)
            for o in comp:
                groups[o] = g
        return len(sccs)

    # ------------------------------------------------------------ restore

    def restore(self, manifest: dict[str, Any], keep_live: bool = True) -> dict[str, Any]:
        """Make the namespace the one the manifest describes; a report of what was done.

        With keep_live, objects whose record equals the last capture's stay as they are
        (nothing read), so that capture must be current (KernelState captures the cells'
        changes first); the rest is read from the store and unpickled here, in this process.
        """
        with self.lock:
            return self._restore(manifest, keep_live)

    def _restore(self, manifest: dict[str, Any], keep_live: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        records = manifest["records"]
        owner = {m: gid for gid, rec in records.items() for m in rec["m"]}
        live = self._live_matches(manifest) if keep_live else {}
        loaded: dict[str, Any] = dict(live)  # objkey -> object
        arrays: dict[str, Any] = {}
        loading: set[str] = set()
        np = _np()
        live_arrays = (
            {_array_id(meta): root for root, meta in self._arrays.values()} if keep_live else {}
        )

        def load_array(akey: str) -> Any:
            if akey in arrays:
                return arrays[akey]
            nonlocal np
            if np is None:
                try:  # arrays in the state, numpy not imported yet in this kernel
                    import numpy as np_mod
                except ImportError:
                    raise StateError(
                        "this state holds numpy arrays: install numpy in this image"
                    ) from None
                np = np_mod
            meta = manifest["arrays"][akey]
            same = live_arrays.get(_array_id(meta))
            if same is not None:  # the live array holds these very bytes: nothing to read
                arrays[akey] = same
                return same
            dtype = np.lib.format.descr_to_dtype(meta["dtype"])
            arr = np.empty(meta["shape"], dtype=dtype, order=meta["order"])
            mv = memoryview(arr.reshape(-1, order="A").view(np.uint8))
            for i, h in enumerate(meta["chunks"]):
                self.store.read_into(h, mv[i * CHUNK : (i + 1) * CHUNK])
            arrays[akey] = arr
            return arr

        def load_ref(pid: Any) -> Any:
            if pid[0] == "var":
                return load(pid[1])
            if pid[0] == "nd":
                base = load_array(pid[1])
                if len(pid) == 2:
                    return base
                _, _, descr, shape, strides, offset = pid
                return np.ndarray(
                    tuple(shape), np.lib.format.descr_to_dtype(descr), base, offset, tuple(strides)
                )
            raise StateError(f"unknown reference {pid[0]!r} in the state")

        def load(objkey: str) -> Any:
            if objkey in loaded:
                return loaded[objkey]
            gid = owner[objkey]
            if gid in loading:
                raise StateError("a reference cycle across records (the state is damaged)")
            loading.add(gid)
            rec = records[gid]
            value = pickling.loads(self.store.get(rec["h"]), self.ns, load_ref)
            values = [value] if len(rec["m"]) == 1 else list(value)
            for m, v in zip(rec["m"], values, strict=True):
                loaded[m] = v
            loading.discard(gid)
            return loaded[objkey]

        new: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for name, objkey in manifest["names"].items():
            try:
                new[name] = load(objkey)
            except Exception as e:  # noqa: BLE001 - one name that does not come back is named
                failed[name] = f"{e.__class__.__name__}: {e}"[:300]
        import importlib

        for name, mod in manifest.get("modules", {}).items():
            try:
                new[name] = importlib.import_module(mod)
            except Exception as e:  # noqa: BLE001
                failed[name] = f"module {mod}: {e.__class__.__name__}: {e}"[:300]
        current = self.variables()
        for name in current:
            if name not in new and name not in manifest.get("unpicklable", {}):
                del self.ns[name]
        self.ns.update(new)
        kept = sorted(n for n, k in manifest["names"].items() if k in live)
        self._adopt(manifest, loaded, arrays)
        return {
            "restored": sorted(n for n in new if n not in kept),
            "kept": kept,
            "failed": failed,
            "unpicklable": manifest.get("unpicklable", {}),
            "seconds": time.perf_counter() - t0,
        }

    def _adopt(
        self, manifest: dict[str, Any], loaded: dict[str, Any], arrays: dict[str, Any]
    ) -> None:
        """Make the restored objects' records the cache, so the next capture pickles only
        what changes after the restore (not everything again)."""
        kept_groups = {oid: g for oid, g in self._groups.items()}
        groups: dict[int, _Group] = {}
        for rec in manifest["records"].values():
            members = [loaded.get(m) for m in rec["m"]]
            if any(m is None and k not in loaded for m, k in zip(members, rec["m"], strict=True)):
                continue
            first = members[0]
            if id(first) in kept_groups and kept_groups[id(first)].h == rec["h"]:
                for m in members:
                    groups[id(m)] = kept_groups[id(first)]
                continue
            if any(r not in loaded for r in rec["r"]) or any(a not in arrays for a in rec["a"]):
                continue
            refs = {_key(loaded[r]) for r in rec["r"]}
            akeys = set()
            for a in rec["a"]:
                root = arrays[a]
                self._arrays[id(root)] = (root, manifest["arrays"][a])
                akeys.add(f"a{id(root):x}")
            g = _Group(members, rec["h"], refs, akeys, 0)
            for m in members:
                groups[id(m)] = g
        self._groups = groups
        self._ids = {n: id(v) for n, v in self.variables().items()}
        self.capture(set())

    def _live_matches(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Target object key -> the live object, for the records that can stay as they are.

        A record stays when every name of it is bound now to one object whose record in
        the last capture has the same content, arrays and references, and what it refers
        to stays too (a kept list holding a reloaded object would break aliasing).
        """
        last = self.last
        if not last:
            return {}
        vars_ = self.variables()
        lrec_of = {m: rec for rec in last["records"].values() for m in rec["m"]}
        names_of: dict[str, list[str]] = {}
        for name, k in manifest["names"].items():
            names_of.setdefault(k, []).append(name)
        cand: dict[str, Any] = {}
        gid_ok: dict[str, bool] = {}
        for gid, rec in manifest["records"].items():
            objs = {}
            ok = True
            for m in rec["m"]:
                ns_names = names_of.get(m, [])
                vals = {id(vars_[n]) for n in ns_names if n in vars_}
                if not ns_names or len(vals) != 1 or any(n not in vars_ for n in ns_names):
                    ok = False
                    break
                obj = vars_[ns_names[0]]
                lrec = lrec_of.get(_key(obj))
                if lrec is None or lrec["h"] != rec["h"] or len(lrec["m"]) != len(rec["m"]):
                    ok = False
                    break
                if any(last["arrays"].get(a) != manifest["arrays"].get(a) for a in rec["a"]) or set(
                    lrec["a"]
                ) != set(rec["a"]):
                    ok = False
                    break
                objs[m] = obj
            gid_ok[gid] = ok
            if ok:
                cand.update(objs)
        # references must be kept too, and must be the same objects they were
        changed = True
        while changed:
            changed = False
            for gid, rec in manifest["records"].items():
                if not gid_ok[gid]:
                    continue
                if any(r not in cand for r in rec["r"]):
                    gid_ok[gid] = False
                    for m in rec["m"]:
                        cand.pop(m, None)
                    changed = True
        return cand


def _array_id(meta: dict[str, Any]) -> str:
    return json.dumps([meta["dtype"], meta["shape"], meta["order"], meta["chunks"]])


def _sccs(graph: dict[int, set[int]]) -> list[list[int]]:
    """Strongly connected components (iterative Tarjan)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, ()))))
                    advanced = True
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    n = stack.pop()
                    on.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                out.append(comp)
    return out


def namespace_digest(ns: dict[str, Any], names: Iterable[str]) -> str:
    """A digest of the values of `names` (pickled plainly; numpy arrays by bytes): what
    tests compare before and after a restore."""
    import hashlib
    import pickle

    h = hashlib.sha256()
    np = _np()
    for name in sorted(names):
        v = ns[name]
        h.update(name.encode())
        if np is not None and isinstance(v, np.ndarray):
            h.update(str((v.dtype.str, v.shape)).encode())
            h.update(np.ascontiguousarray(v).tobytes())
            continue
        buf = io.BytesIO()
        try:
            pickle.dump(v, buf, 4)
            h.update(buf.getvalue())
        except Exception:  # noqa: BLE001 - functions of the notebook: their repr
            h.update(repr(v).encode())
    return h.hexdigest()
