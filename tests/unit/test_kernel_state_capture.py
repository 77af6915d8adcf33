"""The kernel's variables in snapshots (issue 15), without a kernel: capture and restore of
a namespace dict into a state store, change detection, and the host's changed_since."""

from __future__ import annotations

import shutil
import textwrap
import threading
from pathlib import Path

from cellbox.kernel.inside.state import cells
from cellbox.kernel.inside.state.capture import Namespace, namespace_digest
from cellbox.kernel.inside.state.store import Store
from cellbox.runtime.images.snapshots import Snapshots

NOTEBOOK = """
n = 7
rows = [{"i": i, "sq": i * i} for i in range(2000)]
shared = {"k": 1}
pair = [shared, shared]
alias = shared
nested = {"rows": rows, "t": (1, "a", None)}
class Point:
    def __init__(self, x): self.x = x
    def norm(self): return abs(self.x) + n
    @property
    def double(self): return 2 * self.x
    @staticmethod
    def unit(): return 1
pt = Point(-3)
def scale(v, *, by=2): return v * by * n
def make_counter():
    count = 0
    def bump():
        nonlocal count
        count += 1
        return count
    return bump
counter = make_counter()
counter()
fact = lambda k: 1 if k <= 1 else k * fact(k - 1)
cyc_a = []; cyc_b = [cyc_a]; cyc_a.append(cyc_b)
lock = threading.Lock()
holder = [lock]
"""
PLAIN = ["n", "rows", "shared", "pair", "alias", "nested", "cyc_a", "cyc_b"]


def run(ns: dict, code: str) -> None:
    exec(textwrap.dedent(code), ns)


def fresh(store_dir: Path) -> tuple[dict, Namespace]:
    ns: dict = {"__name__": "__main__", "threading": threading}
    return ns, Namespace(ns, Store(store_dir), hidden=lambda: ("threading",))


def behaviour(ns: dict) -> tuple:
    """What the notebook's own functions and classes do (by value, globals live)."""
    return (
        ns["pair"][0] is ns["pair"][1] is ns["shared"] is ns["alias"],
        ns["nested"]["rows"] is ns["rows"],
        ns["pt"].norm(),
        ns["pt"].double,
        ns["Point"].unit(),
        isinstance(ns["pt"], ns["Point"]),
        ns["scale"](2),
        ns["fact"](5),
        ns["cyc_a"][0] is ns["cyc_b"] and ns["cyc_b"][0] is ns["cyc_a"],
    )


def test_round_trip_back_and_forth_keeps_values_aliases_and_code(tmp_path: Path) -> None:
    ns, space = fresh(tmp_path / "state")
    run(ns, NOTEBOOK)
    m1 = space.capture()
    assert set(m1["unpicklable"]) == {"lock", "holder"}
    assert m1["unpicklable"]["lock"]["type"] == "_thread.lock"
    d1, b1 = namespace_digest(ns, PLAIN), behaviour(ns)
    run(ns, "rows.append({'i': -1}); shared['k'] = 2; n = 8; del alias; extra = [1]")
    m2 = space.capture({"rows", "shared", "n", "extra"})
    d2, b2 = (
        namespace_digest(ns, [p for p in PLAIN if p != "alias"] + ["extra"]),
        behaviour_without_alias(ns),
    )
    for _ in range(3):
        report = space.restore(m1)
        assert namespace_digest(ns, PLAIN) == d1 and behaviour(ns) == b1 and "extra" not in ns
        assert set(report["unpicklable"]) == {"lock", "holder"}
        space.restore(m2)
        assert "alias" not in ns and ns["extra"] == [1]
        assert namespace_digest(ns, [p for p in PLAIN if p != "alias"] + ["extra"]) == d2
        assert behaviour_without_alias(ns) == b2
    # the closure's cell came back with its count, and still counts
    space.restore(m1)
    assert ns["counter"]() == 2


def behaviour_without_alias(ns: dict) -> tuple:
    return (ns["pair"][0] is ns["pair"][1] is ns["shared"], ns["pt"].norm(), ns["scale"](1))


def test_fresh_namespace_from_a_copied_store(tmp_path: Path) -> None:
    """As after save/load on another machine: only the store's files travel."""
    ns, space = fresh(tmp_path / "state")
    run(ns, NOTEBOOK)
    m = space.capture()
    d, b = namespace_digest(ns, PLAIN), behaviour(ns)
    shutil.copytree(tmp_path / "state", tmp_path / "elsewhere")
    ns2, space2 = fresh(tmp_path / "elsewhere")
    report = space2.restore(Store(tmp_path / "elsewhere").load_state(m["id"]))
    assert namespace_digest(ns2, PLAIN) == d and behaviour(ns2) == b
    assert "lock" not in ns2 and report["unpicklable"]["lock"]["type"] == "_thread.lock"
    assert ns2["pt"].__class__ is ns2["Point"]


def test_incremental_capture_pickles_only_what_the_cell_named(tmp_path: Path) -> None:
    ns, space = fresh(tmp_path / "state")
    run(ns, NOTEBOOK)
    space.capture()
    run(ns, "n = 9\nsmall = [1]")
    space.capture({"n", "small"})
    assert space.stats["pickled"] == 2  # n and small: not the cycle, not the unpicklable again
    assert space.stats["written"] < 1000  # the rows list was not written again
    before = space.stats["written"]
    run(ns, "rows.append({'i': 'x'})")
    space.capture({"rows"})
    assert space.stats["pickled"] >= 1 and space.stats["written"] > before


def test_unpicklable_nested_names_the_holder(tmp_path: Path) -> None:
    ns, space = fresh(tmp_path / "state")
    run(ns, "import threading\ngen = (i for i in range(3))\nbox = {'g': gen}")
    m = space.capture()
    assert m["unpicklable"]["gen"]["type"] == "generator"
    assert m["unpicklable"]["box"]["error"] == "it holds a variable that does not pickle"


def test_cells_name_what_they_may_change() -> None:
    assert cells.names_in("df['x'] = 1\nrows.append(r)\nimport numpy as np") >= {
        "df",
        "rows",
        "r",
        "np",
    }
    assert cells.names_in("def f(:") is None
    ns: dict = {}
    exec("data = []\ndef helper():\n    data.append(1)\ndef outer():\n    helper()\n", ns)
    assert {"outer", "helper", "data"} <= cells.reachable({"outer"}, ns)
    assert cells.bound_in("a = 1\nfor b in x: pass\nimport os.path\nc.d = 2") == {"a", "b", "os"}


def test_numpy_arrays_views_and_chunks(tmp_path: Path) -> None:
    import numpy as np
    ns, space = fresh(tmp_path / "state")
    ns["np"] = np
    run(
        ns,
        """
        big = np.arange(3_000_000, dtype=np.float64)
        view = big[10:1000:3]
        rev = big[::-1]
        fort = np.asfortranarray(np.arange(600_000, dtype=np.int32).reshape(1000, 600))
        small = np.array([1, 2, 3])
        rec = np.zeros(100_000, dtype=[("a", "i4"), ("b", "f8")])
        """,
    )
    m1 = space.capture()
    names = ["big", "view", "rev", "fort", "small", "rec"]
    d1 = namespace_digest(ns, names)
    run(ns, "big[5] = -1.0")
    space.capture({"big"})
    assert 0 < space.stats["written"] <= (8 << 20) + 4096  # one chunk of 24 MB again, not the array
    space.restore(m1)
    assert namespace_digest(ns, names) == d1
    assert np.shares_memory(ns["view"], ns["big"]) and np.shares_memory(ns["rev"], ns["big"])
    assert ns["fort"].flags.f_contiguous and ns["big"].flags.writeable
    ns["big"][10] = 42.0
    assert ns["view"][0] == 42.0


def test_pandas_frame(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd
    ns, space = fresh(tmp_path / "state")
    ns.update(np=np, pd=pd)
    run(
        ns,
        "df = pd.DataFrame({'x': np.arange(200_000), 'y': np.random.rand(200_000), 's': ['a', 'b'] * 100_000})",
    )
    m = space.capture()
    want = ns["df"].copy()
    run(ns, "df.loc[0, 'y'] = -5.0")
    space.capture({"df"})  # what the cell named (KernelState does this before a restore)
    space.restore(m)
    assert ns["df"].equals(want)


def test_changed_since_names_what_differs(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "var/lib/cellbox/state").mkdir(parents=True)
    (upper / "data.txt").write_text("one")
    snaps = Snapshots(tmp_path / "snapshots")
    first = snaps.create(upper).id
    assert snaps.changed_since(first, upper) == []
    (upper / "var/lib/cellbox/state/chunk").write_text("x")
    second = snaps.create(upper).id
    changed = snaps.changed_since(first, upper)
    assert changed and all(p.startswith("var/lib/cellbox/state") for p in changed)
    (upper / "data.txt").write_text("two")
    assert "data.txt" in snaps.changed_since(second, upper)
    assert "data.txt" not in snaps.changed_since(second, upper)[:0]  # a list, sorted
    snaps.restore(first, upper)
    assert "var/lib/cellbox/state/chunk" in snaps.changed_since(second, upper)


def test_a_deleted_variable_is_not_kept_alive_by_the_cache(tmp_path: Path) -> None:
    import gc
    import weakref

    ns, space = fresh(tmp_path / "state")
    run(ns, "class Big:\n    pass\nbig = Big()\nbig.data = list(range(1000))")
    space.capture()
    gone = weakref.ref(ns["big"])
    del ns["big"]
    space.forget_unbound()
    gc.collect()
    assert gone() is None
