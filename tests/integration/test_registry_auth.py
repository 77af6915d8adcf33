"""Login, basic (htpasswd) and bearer-token auth against the real registry."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from cellbox.runtime.errors import NotFound
from cellbox.runtime.images.registry import AuthError, login, logout, pull, push
from helpers.registry import (
    Proxy,
    TokenServer,
    build_image,
    htpasswd_auth,
    new_store,
    start_registry,
)

USERS = {"alice": "correct horse"}


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("basic")
    reg = start_registry(tmp, htpasswd_auth(tmp, USERS))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("token")
    ts = TokenServer(tmp, USERS)
    reg = start_registry(tmp, ts.auth_yaml())
    reg.extra["tokens"] = ts
    yield reg
    reg.stop()
    ts.stop()


def _image(store, ref, label):
    manifest, config, _ = build_image(store.layout, [{"hello": label.encode()},
                                                    {"more": b"x" * 5000}], label=label)
    return store.add_image(manifest, config, ref)


def test_basic_wrong_password(basic_registry, cellbox_config):
    with pytest.raises(AuthError, match="rejected the username or password"):
        login(basic_registry.host, "alice", "wrong")
    assert not cellbox_config.exists()


def test_basic_needs_login(basic_registry, cellbox_config, store):
    with pytest.raises(AuthError, match="requires a login"):
        pull(store, f"{basic_registry.host}/some/thing:1", progress=False)
    assert store.layout.refs() == {}


def test_basic_login_push_pull_logout(basic_registry, cellbox_config, store, tmp_path):
    login(basic_registry.host, "alice", USERS["alice"])
    mode = stat.S_IMODE(cellbox_config.stat().st_mode)
    assert mode == 0o600
    saved = json.loads(cellbox_config.read_text())["auths"][basic_registry.host]["auth"]
    assert base64.b64decode(saved).decode() == "alice:" + USERS["alice"]
    ref = f"{basic_registry.host}/team/basic:1"
    img = _image(store, ref, "basic")
    assert push(store, ref, progress=False) == img.manifest_digest
    got = pull(new_store(tmp_path / "other"), ref, progress=False)
    assert got.manifest_digest == img.manifest_digest
    logout(basic_registry.host)
    assert basic_registry.host not in json.loads(cellbox_config.read_text())["auths"]
    with pytest.raises(NotFound):
        logout(basic_registry.host)
    with pytest.raises(AuthError):
        pull(new_store(tmp_path / "third"), ref, progress=False)


def test_docker_and_podman_credentials_are_read(basic_registry, cellbox_config, store,
                                                tmp_path, monkeypatch):
    ref = f"{basic_registry.host}/team/fromdocker:1"
    img = _image(store, ref, "docker")
    auth = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    docker = cellbox_config.parent / "docker" / "config.json"
    docker.parent.mkdir(parents=True)
    docker.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    assert push(store, ref, progress=False) == img.manifest_digest
    docker.unlink()
    podman = cellbox_config.parent / "run" / "containers" / "auth.json"
    podman.parent.mkdir(parents=True)
    podman.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    assert pull(new_store(tmp_path / "p"), ref, progress=False).manifest_digest == \
        img.manifest_digest
    assert not cellbox_config.exists()  # reading never writes our own file


def test_token_wrong_password(token_registry, cellbox_config):
    with pytest.raises(AuthError, match="rejected the username or password"):
        login(token_registry.host, "alice", "wrong")
    assert not cellbox_config.exists()


def test_token_anonymous_is_denied(token_registry, cellbox_config, store):
    with pytest.raises(AuthError, match="denied access"):
        pull(store, f"{token_registry.host}/team/x:1", progress=False)


def test_token_push_pull_and_mount(token_registry, cellbox_config, store, tmp_path):
    ts: TokenServer = token_registry.extra["tokens"]
    proxy = Proxy(token_registry.host)
    try:
        login(proxy.host, "alice", USERS["alice"])  # credentials are per host:port
        ref = f"{proxy.host}/team/tok:1"
        img = _image(store, ref, "token")
        assert push(store, ref, progress=False) == img.manifest_digest
        # mount into another repository needs pull on the source in the same token
        other = f"{proxy.host}/other/tok:1"
        store.add_image(img.manifest, img.config, other)
        proxy.log.clear()
        ts.requests.clear()
        assert push(store, other, progress=False) == img.manifest_digest
        mounts = [s for m, p, s in proxy.log if m == "POST" and "mount=" in p]
        assert mounts and all(s == 201 for s in mounts)
        assert any("repository:team/tok:pull" in r.get("scopes", []) for r in ts.requests)
        got = pull(new_store(tmp_path / "o"), ref, progress=False)
        assert got.manifest_digest == img.manifest_digest
    finally:
        proxy.stop()


def _cli(argv, stdin_text=None, monkeypatch=None):
    import argparse
    import io

    from cellbox.runtime.cli import registry as cli

    parser = argparse.ArgumentParser()
    parser.add_argument("--root")
    parser.add_argument("--cgroup-parent")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    if stdin_text is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin_text))
    return args.func(args)


def test_cli_login_push_pull(basic_registry, cellbox_config, tmp_path, monkeypatch, capsys):
    from cellbox.runtime.images.store import ImageStore

    host = basic_registry.host
    with pytest.raises(AuthError, match="rejected"):
        _cli(["login", "-u", "alice", "--password-stdin", host], "nope\n", monkeypatch)
    assert _cli(["login", "-u", "alice", "--password-stdin", host],
                USERS["alice"] + "\n", monkeypatch) == 0
    assert USERS["alice"] not in capsys.readouterr().out  # never printed
    st = ImageStore(tmp_path / "root" / "images")
    ref = f"{host}/cli/img:1"
    img = _image(st, ref, "cli")
    assert _cli(["--root", str(tmp_path / "root"), "push", "-q", ref]) == 0
    assert capsys.readouterr().out.strip() == img.manifest_digest
    assert _cli(["--root", str(tmp_path / "root2"), "pull", "-q", ref]) == 0
    assert capsys.readouterr().out.strip() == img.manifest_digest
    assert _cli(["logout", host]) == 0
