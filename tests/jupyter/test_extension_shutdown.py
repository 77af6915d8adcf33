"""A server that stops cleanly stops its notebooks' containers (on_shutdown), and the
next start finds them again."""

from __future__ import annotations

import pytest
from helpers.lab import containers, ensure, write_notebook

pytestmark = pytest.mark.root


def test_clean_stop_stops_containers_and_restart_finds_them(lab):
    nb = lab.base / "nb" / "clean"
    write_notebook(nb / "one.ipynb")
    s = lab.server("clean", {"Cellbox": {"server_id": "test-clean"}}, notebooks=nb)
    one = ensure(s, "one.ipynb")
    s.stop()  # SIGTERM: a clean stop
    assert lab.engine().get(one["id"]).state().status == "stopped"
    s2 = lab.server("clean2", {"Cellbox": {"server_id": "test-clean", "on_shutdown": "keep"}}, notebooks=nb)
    try:
        found = {c["id"]: c for c in containers(s2)}
        assert one["id"] in found and found[one["id"]]["notebook"] == "one.ipynb"
        assert ensure(s2, "one.ipynb")["id"] == one["id"]  # the same container, started again
        assert lab.engine().get(one["id"]).state().status == "running"
    finally:
        s2.stop()
    assert lab.engine().get(one["id"]).state().status == "running"  # on_shutdown=keep
