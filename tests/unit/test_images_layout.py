"""The OCI layout: atomic, verified blobs and an index of refs."""

import hashlib
import io
import json

import pytest
from cellbox.runtime.errors import InvalidArgument, NotFound
from cellbox.runtime.images.layout import DigestMismatch, Layout


def test_new_layout_files(tmp_path):
    lay = Layout(tmp_path / "l")
    assert json.loads((tmp_path / "l" / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }
    assert lay.index()["manifests"] == []
    assert lay.index()["schemaVersion"] == 2


def test_open_missing_layout(tmp_path):
    with pytest.raises(NotFound):
        Layout(tmp_path / "nope", create=False)


def test_write_blob_bytes_and_stream(tmp_path):
    lay = Layout(tmp_path)
    d, n = lay.write_blob(b"hello")
    assert d == "sha256:" + hashlib.sha256(b"hello").hexdigest() and n == 5
    assert lay.open_blob(d).read() == b"hello"
    d2, n2 = lay.write_blob(io.BytesIO(b"x" * 3_000_000))
    assert n2 == 3_000_000 and lay.has_blob(d2)


def test_digest_mismatch_leaves_nothing(tmp_path):
    lay = Layout(tmp_path)
    bad = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch, match="mismatch"):
        lay.write_blob(io.BytesIO(b"abc"), expected_digest=bad)
    with pytest.raises(DigestMismatch, match="size"):
        lay.write_blob(io.BytesIO(b"abc"), expected_size=4)
    assert not lay.has_blob(bad)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert lay.blobs() == []


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "../x", ""])
def test_bad_digest(tmp_path, bad):
    with pytest.raises(InvalidArgument):
        Layout(tmp_path).blob_path(bad)


def test_blob_writer_discard_on_error(tmp_path):
    lay = Layout(tmp_path)
    with pytest.raises(RuntimeError):
        with lay.blob_writer() as w:
            w.write(b"partial")
            raise RuntimeError("boom")
    assert lay.blobs() == [] and list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_blob_writer_resume(tmp_path):
    lay = Layout(tmp_path)
    data = b"0123456789" * 1000
    want = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(ConnectionError):
        with lay.blob_writer(want, resume_key=want) as w:
            w.write(data[:4000])
            raise ConnectionError
    with lay.blob_writer(want, resume_key=want) as w:
        assert w.offset == 4000
        w.write(data[w.offset :])
    assert w.digest == want and lay.open_blob(want).read() == data


def test_refs(tmp_path):
    lay = Layout(tmp_path)
    desc = lay.write_json({"a": 1}, "application/vnd.oci.image.manifest.v1+json")
    assert desc["size"] == len(b'{"a":1}')
    lay.set_ref("docker.io/library/x:1", desc)
    lay.set_ref("docker.io/library/x:2", desc)
    lay.set_ref("docker.io/library/x:1", desc)  # moves, no duplicate
    assert sorted(lay.refs()) == ["docker.io/library/x:1", "docker.io/library/x:2"]
    assert lay.resolve_ref("docker.io/library/x:1")["digest"] == desc["digest"]
    lay.remove_ref("docker.io/library/x:1")
    assert lay.resolve_ref("docker.io/library/x:1") is None
    with pytest.raises(NotFound):
        lay.remove_ref("docker.io/library/x:1")
    with lay.lock():
        with lay.lock():  # re-entrant
            lay.set_ref("y", desc)
    assert "y" in lay.refs()
    assert lay.read_json(desc["digest"]) == {"a": 1}
