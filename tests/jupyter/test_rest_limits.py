"""REST request bodies against a real `jupyter server` (issue 11, item 9): a body over
the cap gets 413 before it is read, malformed or deeply nested JSON gets 400 (never
500), and image references are validated by the one reference parser."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def srv(lab):
    s = lab.server("limits")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def small(lab):
    s = lab.server("limits-small", {"Cellbox": {"max_request_body": 4096}})
    yield s
    s.stop()


def raw_post(server, path: str, length: int, body: bytes = b"") -> tuple[int, bytes, float]:
    """POST announcing `length` bytes but sending only `body`: (status, body, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        head = (
            f"POST /cellbox/api/{path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: token {server.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _clen(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, rest = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), rest, time.monotonic() - started


def _clen(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


def test_a_200_mb_body_is_refused_with_413_before_it_is_sent(srv):
    status, body, took = raw_post(srv, "containers", 200_000_000, b'{"path": "')
    assert status == 413
    assert body.count(b"\n") == 0 and json.loads(body)["error"] == "RequestTooLarge"
    assert "1048576" in json.loads(body)["message"]
    assert took < 10  # answered from the headers: the 200 MB never had to arrive
    # the server is fine afterwards
    assert srv.api("GET", "status").status_code == 200


def test_body_cap_is_configurable(small):
    pad = "x" * 5000
    r = small.api("POST", "containers", json={"path": pad + ".ipynb"})
    assert r.status_code == 413 and r.json()["error"] == "RequestTooLarge", r.text
    r = small.api("POST", "containers", json={"path": "../" + "x" * 3000 + ".ipynb"})
    assert r.status_code == 400 and r.json()["error"] == "InvalidArgument", r.text  # under the cap: validated


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_is_400_not_500(srv, depth):
    body = ('{"path": ' + "[" * depth + "]" * depth + "}").encode()
    r = srv.api("POST", "containers", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "InvalidArgument"
    r = srv.api("POST", "images/tag", data=body.replace(b'"path"', b'"source"'))
    assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    "body", [b'{"path": "a.ipynb"', b"\xff\xfe{}", b"[1, 2", b'{"path": "\\ud800"}' + b"\x00"], ids=["cut", "utf16", "list", "nul"]
)
def test_malformed_json_is_400(srv, body):
    r = srv.api("POST", "containers", data=body)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    "bad",
    ["sha256:" + "0" * 64, "0" * 64, "sha256:abc", "Busybox:1", "a" * 600],
    ids=["sha256-zeros", "hex64", "sha256-short", "uppercase", "long"],
)
def test_ambiguous_or_bad_references_are_refused(srv, bad):
    r = srv.api("POST", "images/tag", json={"source": "cellbox/python:3.11", "target": bad})
    assert r.status_code == 400 and r.json()["error"] == "InvalidArgument", r.text
    r = srv.api("POST", "images/pull", json={"ref": bad})
    assert r.status_code == 400, r.text
    names = [ref for img in srv.api("GET", "images").json() for ref in img["refs"]]
    assert not [n for n in names if n.startswith("sha256") or n.startswith("0" * 64)], names


def test_an_image_id_still_resolves(srv):
    img = srv.api("GET", "images").json()[0]
    r = srv.api("GET", f"images/{img['id']}")
    assert r.status_code == 200 and r.json()["id"] == img["id"], r.text
    r = srv.api("GET", f"images/{img['short_id']}")
    assert r.status_code == 200, r.text
