"""Push and pull against the real distribution registry, skopeo as the peer, and a
fault-injecting proxy in front of the registry."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests
from cellbox.runtime.errors import CellboxError, InvalidArgument
from cellbox.runtime.images.layout import DigestMismatch, Layout
from cellbox.runtime.images.registry import (
    AuthError,
    BlobUnknown,
    ManifestError,
    RegistryUnreachable,
    pull,
    push,
    push_from_layout,
)
from cellbox.runtime.images.registry.manifest import host_platform
from helpers.registry import OCI_INDEX, Fault, build_image, busybox_layer_files, new_store, skopeo


def _image(store, ref, label="", extra=b""):
    layers = [busybox_layer_files(), {"etc/hello": b"hello " + label.encode() + extra}]
    manifest, config, _ = build_image(store.layout, layers, label=label)
    return store.add_image(manifest, config, ref)


def _assert_clean(layout: Layout, digests=()):
    """No ref, none of `digests`, no temp or partial files left in the layout."""
    assert layout.refs() == {}
    for d in digests:
        assert not layout.has_blob(d)
    tmp = layout.root / "blobs" / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_push_then_pull_identical_digests(registry, store, tmp_path):
    ref = f"{registry.host}/test/app:v1"
    img = _image(store, ref, "a")
    events = []
    digest = push(store, ref, progress=events.append)
    assert digest == img.manifest_digest
    assert {e.status for e in events} >= {"waiting", "uploading", "done"}
    other = new_store(tmp_path / "other")
    got = pull(other, ref, progress=False)
    assert got.manifest_digest == digest
    manifest = other.layout.read_json(digest)
    for d in [manifest["config"]["digest"]] + [x["digest"] for x in manifest["layers"]]:
        assert other.layout.blob_path(d).read_bytes() == store.layout.blob_path(d).read_bytes()
    assert other.resolve(ref).manifest_digest == digest
    # by digest too
    again = new_store(tmp_path / "third")
    assert pull(again, f"{registry.host}/test/app@{digest}", progress=False).manifest_digest \
        == digest


def test_skopeo_pulls_what_we_pushed(registry, store, tmp_path):
    ref = f"{registry.host}/test/forskopeo:1"
    img = _image(store, ref, "sk")
    digest = push(store, ref, progress=False)
    dest = tmp_path / "skopeo-oci"
    subprocess.run([skopeo(), "copy", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{dest}:got"], check=True, capture_output=True, timeout=60)
    index = json.loads((dest / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    assert img.manifest_digest == digest


def test_we_pull_what_skopeo_pushed(registry, tmp_path):
    src = Layout(tmp_path / "src")
    manifest, config, mdesc = build_image(src, [busybox_layer_files()], label="from-skopeo")
    src.set_ref("src", mdesc)
    ref = f"{registry.host}/skopeo/pushed:2"
    subprocess.run([skopeo(), "copy", "--dest-tls-verify=false", f"oci:{src.root}:src",
                    f"docker://{ref}"], check=True, capture_output=True, timeout=60)
    r = requests.get(f"http://{registry.host}/v2/skopeo/pushed/manifests/2",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    st = new_store(tmp_path / "store")
    img = pull(st, ref, progress=False)
    assert img.manifest_digest == r.headers["Docker-Content-Digest"]
    got = st.layout.read_json(img.manifest_digest)
    assert got["layers"][0]["digest"] == manifest["layers"][0]["digest"]
    assert st.layout.read_json(got["config"]["digest"])["config"]["Labels"] == \
        {"test": "from-skopeo"}


def test_second_push_skips_every_blob_and_other_repo_mounts(registry, proxy, store):
    ref = f"{proxy.host}/test/skip:1"
    img = _image(store, ref, "skip")
    push(store, ref, progress=False)
    assert proxy.count("PUT", "/blobs/uploads/") == 3  # config + 2 layers: new registry name
    proxy.log.clear()
    assert push(store, ref, progress=False) == img.manifest_digest
    assert proxy.count("HEAD", "/blobs/sha256:") == 3
    assert proxy.count("POST") == 0 and proxy.count("PUT", "/blobs/") == 0
    assert proxy.count("PATCH") == 0

    other = f"{proxy.host}/elsewhere/skip:1"
    store.add_image(store.layout.read_json(img.manifest_digest), img.config, other)
    proxy.log.clear()
    assert push(store, other, progress=False) == img.manifest_digest
    mounts = [(m, p, s) for m, p, s in proxy.log if m == "POST" and "mount=" in p]
    assert len(mounts) == 3 and all(s == 201 for _, _, s in mounts)
    assert proxy.count("PUT", "/blobs/") == 0


def test_chunked_upload(registry, proxy, store, tmp_path):
    ref = f"{proxy.host}/test/chunked:1"
    img = _image(store, ref, "chunked", extra=os.urandom(300_000))
    push(store, ref, progress=False, chunk_size=64 * 1024)
    assert proxy.count("PATCH") >= 5
    other = new_store(tmp_path / "o")
    assert pull(other, ref, progress=False).manifest_digest == img.manifest_digest


def test_index_selects_platform(registry, tmp_path):
    src = Layout(tmp_path / "src")
    amd, _, amd_desc = build_image(src, [{"arch": b"amd64"}], arch="amd64", label="amd64")
    arm, _, arm_desc = build_image(src, [{"arch": b"arm64"}], arch="arm64", label="arm64")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**arm_desc, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {**amd_desc, "platform": {"os": "linux", "architecture": "amd64"}}]}
    idesc = src.write_json(index, OCI_INDEX)
    ref = f"{registry.host}/multi/arch:1"
    assert push_from_layout(src, idesc["digest"], ref, progress=False) == idesc["digest"]
    mine = amd_desc if host_platform() == "linux/amd64" else arm_desc
    st = new_store(tmp_path / "a")
    assert pull(st, ref, progress=False).manifest_digest == mine["digest"]
    st2 = new_store(tmp_path / "b")
    assert pull(st2, ref, platform="linux/arm64", progress=False).manifest_digest == \
        arm_desc["digest"]
    assert st2.layout.read_json(arm["config"]["digest"])["architecture"] == "arm64"
    with pytest.raises(ManifestError, match="no image for linux/s390x"):
        pull(new_store(tmp_path / "c"), ref, platform="linux/s390x", progress=False)


# faults -------------------------------------------------------------------------------
def _pushed(store, registry, name, extra=b""):
    ref = f"{registry.host}/faults/{name}:1"
    img = _image(store, ref, name, extra=extra)
    push(store, ref, progress=False)
    m = store.layout.read_json(img.manifest_digest)
    return img, m


def test_wrong_blob_is_rejected_nothing_kept(registry, proxy, store, tmp_path):
    img, m = _pushed(store, registry, "wrong")
    layer = m["layers"][1]["digest"]
    proxy.faults.append(Fault("GET", f"/blobs/{layer}", "corrupt", times=100))
    st = new_store(tmp_path / "p")
    with pytest.raises(DigestMismatch):
        pull(st, f"{proxy.host}/faults/wrong:1", progress=False)
    _assert_clean(st.layout, [layer, img.manifest_digest])


def test_dropped_connection_resumes(registry, proxy, store, tmp_path):
    img, m = _pushed(store, registry, "drop", extra=os.urandom(200_000))
    layer = m["layers"][1]["digest"]
    proxy.faults.append(Fault("GET", f"/blobs/{layer}", "drop", times=1))
    st = new_store(tmp_path / "p")
    got = pull(st, f"{proxy.host}/faults/drop:1", progress=False)
    assert got.manifest_digest == img.manifest_digest
    assert st.layout.blob_path(layer).read_bytes() == store.layout.blob_path(layer).read_bytes()
    assert proxy.count("GET", f"/blobs/{layer}") == 2
    assert list((st.layout.root / "blobs" / "tmp").iterdir()) == []


def test_500_once_is_retried(registry, proxy, store, tmp_path):
    img, m = _pushed(store, registry, "five")
    proxy.faults.append(Fault("GET", "/manifests/1", "500", times=1))
    proxy.faults.append(Fault("GET", f"/blobs/{m['layers'][0]['digest']}", "500", times=1))
    st = new_store(tmp_path / "p")
    assert pull(st, f"{proxy.host}/faults/five:1", progress=False).manifest_digest == \
        img.manifest_digest
    assert [s for _, p, s in proxy.log if "/manifests/" in p] == [500, 200]


def test_500_once_on_upload_is_retried(registry, proxy, store):
    ref = f"{proxy.host}/faults/up500:1"
    img = _image(store, ref, "up500", extra=b"x" * 1000)
    proxy.faults.append(Fault("PUT", "/blobs/uploads/", "500", times=1))
    assert push(store, ref, progress=False) == img.manifest_digest
    r = requests.get(f"http://{registry.host}/v2/faults/up500/manifests/1",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.headers["Docker-Content-Digest"] == img.manifest_digest


# bad input ----------------------------------------------------------------------------
def test_unreachable_registry(store):
    with pytest.raises(RegistryUnreachable, match="unreachable"):
        pull(store, "127.0.0.1:1/nothing/here:1", progress=False)
    _assert_clean(store.layout)


def test_malformed_reference(store):
    with pytest.raises(InvalidArgument, match="invalid reference"):
        pull(store, "127.0.0.1:5000/UPPER/case:tag", progress=False)
    with pytest.raises(InvalidArgument):
        push(store, "bad ref", progress=False)
    _assert_clean(store.layout)


def test_manifest_not_json(registry, proxy, store, tmp_path):
    _pushed(store, registry, "notjson")
    proxy.faults.append(Fault("GET", "/manifests/", "garbage", times=10))
    st = new_store(tmp_path / "p")
    with pytest.raises(ManifestError, match="not valid JSON"):
        pull(st, f"{proxy.host}/faults/notjson:1", progress=False)
    _assert_clean(st.layout)


def test_manifest_names_missing_blob(registry, store, tmp_path):
    img, m = _pushed(store, registry, "missing")
    layer = m["layers"][1]["digest"]
    r = requests.delete(f"http://{registry.host}/v2/faults/missing/blobs/{layer}")
    assert r.status_code == 202
    st = new_store(tmp_path / "p")
    with pytest.raises(BlobUnknown, match=layer):
        pull(st, f"{registry.host}/faults/missing:1", progress=False)
    _assert_clean(st.layout, [layer, img.manifest_digest])


def test_push_of_image_missing_local_blob(registry, store):
    ref = f"{registry.host}/faults/localmissing:1"
    img = _image(store, ref, "lm")
    layer = store.layout.read_json(img.manifest_digest)["layers"][1]["digest"]
    store.layout.blob_path(layer).unlink()
    with pytest.raises(ManifestError, match="not in the store"):
        push(store, ref, progress=False)


def test_401_without_challenge(registry, proxy, store):
    proxy.faults.append(Fault("GET", "/manifests/", "401bare", times=10))
    with pytest.raises(AuthError, match="no usable authentication challenge"):
        pull(store, f"{proxy.host}/faults/x:1", progress=False)
    _assert_clean(store.layout)


def test_unknown_image(registry, store):
    with pytest.raises(CellboxError, match="not found"):
        pull(store, f"{registry.host}/no/such:image", progress=False)
    _assert_clean(store.layout)


