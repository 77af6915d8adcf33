"""The image store without privileges: commit, config, tags, rmi/prune, check, schemas."""

import io
import os

import jsonschema
import pytest
from cellbox.runtime.errors import Conflict, InvalidArgument, NotFound
from cellbox.runtime.images.store import ImageStore

DIGEST = {"type": "string", "pattern": "^sha256:[a-f0-9]{64}$"}
DESCRIPTOR = {
    "type": "object",
    "required": ["mediaType", "digest", "size"],
    "properties": {
        "mediaType": {"type": "string"},
        "digest": DIGEST,
        "size": {"type": "integer", "minimum": 0},
    },
}
# Written from the OCI image-spec text (manifest.md, config.md), not copied from its schema files.
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["schemaVersion", "config", "layers"],
    "properties": {
        "schemaVersion": {"const": 2},
        "mediaType": {"const": "application/vnd.oci.image.manifest.v1+json"},
        "config": DESCRIPTOR,
        "layers": {"type": "array", "items": DESCRIPTOR},
    },
}
STRS = {"type": "array", "items": {"type": "string"}}
CONFIG_SCHEMA = {
    "type": "object",
    "required": ["architecture", "os", "rootfs"],
    "properties": {
        "created": {"type": "string", "format": "date-time"},
        "config": {"type": "object", "properties": {"Env": STRS, "Cmd": STRS, "Entrypoint": STRS,
                   "User": {"type": "string"}, "WorkingDir": {"type": "string"}}},
        "rootfs": {"type": "object", "required": ["type", "diff_ids"],
                   "properties": {"type": {"const": "layers"}, "diff_ids": {"type": "array", "items": DIGEST}}},
        "history": {"type": "array", "items": {"type": "object", "properties": {
            "created": {"type": "string"}, "created_by": {"type": "string"},
            "comment": {"type": "string"}, "empty_layer": {"type": "boolean"}}}},
    },
}  # fmt: skip


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "images")


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "tree"
    (t / "etc").mkdir(parents=True)
    (t / "etc" / "hello").write_text("hi\n")
    os.symlink("hello", t / "etc" / "link")
    return t


def test_commit_and_schemas(store, tree):
    img = store.commit(tree, None, ref="me/app:v1", message="first", author="a",
                       changes=["ENV A=1", 'CMD ["sh"]', "WORKDIR /w", "USER 1000", "LABEL x=y"])  # fmt: skip
    assert img.refs == ["me/app:v1"]
    jsonschema.validate(img.manifest, MANIFEST_SCHEMA)
    jsonschema.validate(img.config, CONFIG_SCHEMA)
    c = img.config["config"]
    assert c["Cmd"] == ["sh"] and c["WorkingDir"] == "/w" and c["User"] == "1000"
    assert "A=1" in c["Env"] and c["Labels"] == {"x": "y"}
    h = store.history(img)
    assert h[0]["comment"] == "first" and h[0]["size"] == img.manifest["layers"][0]["size"]
    assert store.resolve("me/app:v1").id == img.id
    assert store.resolve("docker.io/me/app:v1").id == img.id
    assert store.resolve(img.id[7:19]).id == img.id
    assert store.check() == []


def test_bad_changes_and_refs(store, tree):
    with pytest.raises(InvalidArgument, match="lowercase"):
        store.commit(tree, None, ref="Bad/Name")
    with pytest.raises(InvalidArgument, match="unsupported change"):
        store.commit(tree, None, ref="x", changes=["RUN rm -rf /"])
    with pytest.raises(NotFound):
        store.resolve("nothing:here")


def test_reproducible(store, tree, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000")
    a = store.commit(tree, None, ref="r:1", reproducible=True)
    os.utime(tree / "etc" / "hello", (5000, 5000))
    b = store.commit(tree, None, ref="r:2", reproducible=True)
    assert a.manifest["layers"] == b.manifest["layers"] and a.id == b.id


def test_tags_move_and_untagged_kept(store, tree):
    a = store.commit(tree, None, ref="t:1")
    (tree / "new").write_text("x")
    b = store.commit(tree, a, ref="t:1")
    assert store.resolve("t:1").id == b.id
    old = [i for i in store.list() if i.id == a.id]
    assert old and old[0].refs == []  # <none>, as docker keeps it
    store.tag("t:1", "t:2")
    assert store.resolve("t:2").id == b.id
    assert store.rmi("t:2") == ["Untagged: t:2"]
    assert store.prune() == 1
    with pytest.raises(NotFound):
        store.resolve(a.id)
    assert store.check() == []


def test_rmi_refuses_used_image(store, tree):
    img = store.commit(tree, None, ref="used:1")
    store.retain(img.id, "ctr1")
    with pytest.raises(Conflict, match="ctr1"):
        store.rmi("used:1")
    store.rmi("used:1", force=True)
    assert store.resolve(img.id).refs == []  # kept for the container
    assert store.prune() == 0
    store.release("ctr1")
    assert store.prune() == 1
    assert store.layout.blobs() == []


def test_corrupt_blob_named(store, tree):
    img = store.commit(tree, None, ref="c:1")
    layer = img.manifest["layers"][0]["digest"]
    p = store.layout.blob_path(layer)
    p.write_bytes(p.read_bytes()[:-3] + b"xyz")
    problems = store.check()
    assert any(layer in x and "corrupt" in x for x in problems)
    p.unlink()
    assert any(layer in x and "missing" in x for x in store.check())


def test_save_load_round_trip(store, tree, tmp_path):
    img = store.commit(tree, None, ref="s:1")
    buf = io.BytesIO()
    store.save(["s:1"], buf)
    other = ImageStore(tmp_path / "other")
    buf.seek(0)
    (got,) = other.load(buf)
    assert got.id == img.id and got.refs == ["s:1"]
    assert other.check() == []


def test_import_tar_refuses_hostile(store, tmp_path):
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("../evil"))
    buf.seek(0)
    with pytest.raises(InvalidArgument, match="'..' component"):
        store.import_rootfs(buf, "evil:1")
    assert store.list() == []
