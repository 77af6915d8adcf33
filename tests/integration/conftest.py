"""Fixtures of the integration tests: a real distribution registry (one per module), a
fault-injecting proxy in front of it, an image store, and credentials files kept in the
test's temp dir. The code behind them is in tests/helpers/registry.py."""

from __future__ import annotations

import pytest
from helpers.registry import Proxy, new_store, start_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture
def proxy(registry):
    p = Proxy(registry.host)
    yield p
    p.stop()


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path / "store")


@pytest.fixture
def cellbox_config(tmp_path, monkeypatch):
    """Point every credentials file at the test's temp dir."""
    cfg = tmp_path / "cfg"
    monkeypatch.setenv("CELLBOX_CONFIG", str(cfg / "cellbox.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg / "docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(cfg / "run"))
    monkeypatch.setenv("HOME", str(cfg / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return cfg / "cellbox.json"
