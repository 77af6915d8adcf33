"""Registry client pieces that need no registry: challenges, manifests, platforms,
credentials files, progress events, the http/https rule."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.images.registry import RegistryClient, normalize_registry
from cellbox.runtime.images.registry import credentials as creds
from cellbox.runtime.images.registry.auth import parse_challenge
from cellbox.runtime.images.registry.client import _with_query, is_local
from cellbox.runtime.images.registry.errors import ManifestError
from cellbox.runtime.images.registry.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    host_platform,
    parse_manifest,
    select_platform,
)
from cellbox.runtime.images.registry.progress import Progress

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
D3 = "sha256:" + "c" * 64


def test_parse_bearer_challenge():
    h = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
         'scope="repository:library/busybox:pull"')
    assert parse_challenge(h) == ("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull"})


def test_parse_basic_and_escapes():
    assert parse_challenge('Basic realm="a \\"quoted\\" realm"') == \
        ("basic", {"realm": 'a "quoted" realm'})
    assert parse_challenge("") is None
    assert parse_challenge("   ") is None


def _manifest(mt=OCI_MANIFEST):
    return {"schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": "x", "digest": D1, "size": 10},
            "layers": [{"mediaType": "y", "digest": D2, "size": 20}]}


@pytest.mark.parametrize("mt", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_parse_manifest_types(mt):
    got_mt, doc = parse_manifest(json.dumps(_manifest(mt)).encode(), None, "x")
    assert got_mt == mt and doc["layers"][0]["digest"] == D2


def test_parse_manifest_media_type_from_header():
    m = _manifest()
    del m["mediaType"]
    assert parse_manifest(json.dumps(m).encode(), DOCKER_MANIFEST + "; charset=utf-8",
                          "x")[0] == DOCKER_MANIFEST


@pytest.mark.parametrize("raw,match", [
    (b"not json", "not valid JSON"),
    (b"[1,2]", "not a JSON object"),
    (json.dumps({**_manifest(), "schemaVersion": 1}).encode(), "schemaVersion"),
    (json.dumps({**_manifest(), "layers": [{"digest": "sha256:zz", "size": 1}]}).encode(),
     "invalid digest"),
    (json.dumps({**_manifest(), "layers": [{"digest": D2, "size": -1}]}).encode(),
     "invalid size"),
    (json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), "unsupported type"),
])
def test_parse_manifest_rejects(raw, match):
    with pytest.raises(ManifestError, match=match):
        parse_manifest(raw, None, "x")


def _index(mt=OCI_INDEX):
    def d(dig, arch, variant=None):
        p = {"os": "linux", "architecture": arch}
        if variant:
            p["variant"] = variant
        return {"mediaType": OCI_MANIFEST, "digest": dig, "size": 1, "platform": p}
    return {"schemaVersion": 2, "mediaType": mt,
            "manifests": [d(D1, "arm", "v6"), d(D2, "arm", "v7"), d(D3, "amd64")]}


def test_select_platform():
    idx = _index()
    assert select_platform(idx, "linux/amd64", "x")["digest"] == D3
    assert select_platform(idx, "linux/arm/v7", "x")["digest"] == D2
    assert select_platform(idx, "linux/arm/v6", "x")["digest"] == D1
    with pytest.raises(ManifestError, match="no image for linux/s390x.*linux/amd64"):
        select_platform(idx, "linux/s390x", "x")
    with pytest.raises(ManifestError, match="invalid platform"):
        select_platform(idx, "linux", "x")
    assert parse_manifest(json.dumps(_index(DOCKER_LIST)).encode(), None, "x")[0] == DOCKER_LIST


def test_host_platform(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert host_platform() == "linux/amd64"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert host_platform() == "linux/arm64"


@pytest.mark.parametrize("host,local", [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.9.9.9", True),
    ("[::1]:5000", True), ("::1", True), ("10.0.0.1:5000", False),
    ("registry.example.com", False), ("docker.io", False), ("localhost.evil.com", False),
])
def test_is_local(host, local):
    assert is_local(host) is local


def test_http_only_for_local_or_insecure():
    assert RegistryClient("127.0.0.1:5000", credentials=None).base == "http://127.0.0.1:5000"
    assert RegistryClient("registry.example.com", credentials=None).base.startswith("https://")
    assert RegistryClient("registry.example.com", credentials=None,
                          insecure=True).base.startswith("http://")
    assert RegistryClient("docker.io", credentials=None).base == "https://registry-1.docker.io"


def test_with_query_keeps_state():
    assert _with_query("http://h/v2/x/blobs/uploads/u?_state=abc", digest=D1) == \
        f"http://h/v2/x/blobs/uploads/u?_state=abc&digest={D1.replace(':', '%3A')}"


def test_normalize_registry():
    assert normalize_registry("https://index.docker.io/v1/") == "docker.io"
    assert normalize_registry("quay.io") == "quay.io"
    assert normalize_registry("http://127.0.0.1:5000/") == "127.0.0.1:5000"
    with pytest.raises(InvalidArgument):
        normalize_registry("")


@pytest.fixture
def homes(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLBOX_CONFIG", str(tmp_path / "cellbox" / "config.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return tmp_path


def _write_auth(path, registry, user, pw):
    path.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{pw}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))


def test_credentials_order(homes):
    assert creds.get_credentials("r.example") is None
    _write_auth(homes / "home" / ".config" / "containers" / "auth.json", "r.example", "p", "1")
    assert creds.get_credentials("r.example") == ("p", "1")
    _write_auth(homes / "run" / "containers" / "auth.json", "r.example", "pr", "2")
    assert creds.get_credentials("r.example") == ("pr", "2")
    _write_auth(homes / "home" / ".docker" / "config.json", "r.example", "hd", "3")
    assert creds.get_credentials("r.example") == ("hd", "3")
    _write_auth(homes / "docker" / "config.json", "https://r.example", "d", "4")
    assert creds.get_credentials("r.example") == ("d", "4")
    creds.store_credentials("r.example", "me", "pw:with:colons")
    assert creds.get_credentials("r.example") == ("me", "pw:with:colons")


def test_docker_hub_keys(homes):
    _write_auth(homes / "docker" / "config.json", "https://index.docker.io/v1/", "hub", "x")
    assert creds.get_credentials("docker.io") == ("hub", "x")


def test_store_is_0600_atomic_and_keeps_other_entries(homes):
    path = creds.cellbox_config_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"auths": {"other": {"auth": "eDp5"}}, "psFormat": "x"}))
    creds.store_credentials("r.example", "me", "secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert set(data["auths"]) == {"other", "r.example"} and data["psFormat"] == "x"
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp left
    assert creds.remove_credentials("r.example") is True
    assert creds.remove_credentials("r.example") is False
    assert set(json.loads(path.read_text())["auths"]) == {"other"}


def test_corrupt_credentials_file_is_a_clear_error(homes):
    from cellbox.runtime.errors import CellboxError

    path = creds.cellbox_config_path()
    path.parent.mkdir(parents=True)
    path.write_text("{oops")
    with pytest.raises(CellboxError, match="not valid JSON"):
        creds.get_credentials("r.example")


def test_progress_callback_events():
    events = []
    p = Progress("pull", "x:1", events.append)
    p.add(D1, "layer", 100)
    p.status(D1, "downloading")
    p.advance(D1, 40)
    p.advance(D1, 60)
    p.status(D1, "done")
    p.close()
    assert [e.status for e in events] == ["waiting", "downloading", "downloading",
                                          "downloading", "done"]
    assert [e.current for e in events] == [0, 0, 40, 100, 100]
    assert all(e.total == 100 and e.action == "pull" for e in events)


def test_progress_quiet_without_terminal(capsys):
    p = Progress("push", "x:1", None)  # stderr is captured: not a terminal
    p.add(D1, "layer", 10)
    p.status(D1, "done")
    p.close()
    assert capsys.readouterr().err == ""
