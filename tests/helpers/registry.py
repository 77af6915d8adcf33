"""A real distribution registry (Debian's docker-registry) on 127.0.0.1 for tests,
optionally behind htpasswd or token auth, plus a fault-injecting proxy and helpers
that build small images through the Layout API.

The fixtures built on it (registry, proxy, store, cellbox_config) are in
tests/integration/conftest.py; benchmarks/bench_registry.py uses it too.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from cellbox.runtime.images.layout import Layout

from helpers.net import free_port

REGISTRY_BIN = "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Registry:
    root: Path
    port: int
    proc: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_registry(tmp: Path, auth_yaml: str = "") -> Registry:
    """Start docker-registry with storage in `tmp`, on a free loopback port."""
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip(f"{REGISTRY_BIN} not installed (Debian package docker-registry)")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    storage = tmp / "storage"
    storage.mkdir(exist_ok=True)
    cfg = tmp / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        "storage:\n  filesystem:\n    rootdirectory: " + str(storage) + "\n"
        "  delete:\n    enabled: true\n"
        "http:\n  addr: 127.0.0.1:" + str(port) + "\n  secret: " + uuid.uuid4().hex + "\n"
        + auth_yaml
    )
    log = tmp / "registry.log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)], stdout=lf, stderr=lf,
                                stdin=subprocess.DEVNULL)
    reg = Registry(tmp, port, proc, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"registry exited: {log.read_text()[-2000:]}")
        try:
            r = requests.get(f"http://{reg.host}/v2/", timeout=1)
            if r.status_code in (200, 401):
                return reg
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    reg.stop()
    raise RuntimeError("registry did not come up in 10 s")


def htpasswd_auth(tmp: Path, users: dict[str, str]) -> str:
    bcrypt = pytest.importorskip("bcrypt", reason="pip package bcrypt needed for htpasswd")
    path = tmp / "htpasswd"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
        for u, p in users.items()))
    return f"auth:\n  htpasswd:\n    realm: cellbox-test\n    path: {path}\n"


# token server -----------------------------------------------------------------------
def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenServer:
    """Issues RS256 JWTs the registry trusts (x5c chain to a self-signed root)."""

    def __init__(self, tmp: Path, users: dict[str, str], service: str = "cellbox-registry"):
        crypto = pytest.importorskip("cryptography", reason="pip package cryptography needed")
        del crypto
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users, self.service, self.issuer = users, service, "cellbox-test-issuer"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cellbox test token")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = tmp / "token-root.pem"
        tmp.mkdir(parents=True, exist_ok=True)
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict] = []
        server = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def auth_yaml(self) -> str:
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.service}\n"
                f"    issuer: {self.issuer}\n    rootcertbundle: {self.bundle}\n")

    def _sign(self, claims: dict) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert_der).decode()]}
        msg = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        sig = self.key.sign(msg.encode(), padding.PKCS1v15(), hashes.SHA256())
        return msg + "." + _b64url(sig)

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs, urlsplit

        q = parse_qs(urlsplit(h.path).query)
        user = None
        authz = h.headers.get("Authorization", "")
        if authz.startswith("Basic "):
            u, _, p = base64.b64decode(authz[6:]).decode().partition(":")
            if self.users.get(u) != p:
                self.requests.append({"user": u, "ok": False})
                h.send_response(401)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            user = u
        access = []
        for scope in q.get("scope", []):
            typ, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if user:  # authenticated users may do anything; anonymous nothing
                access.append({"type": typ, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        token = self._sign({"iss": self.issuer, "sub": user or "", "aud": self.service,
                            "exp": now + 300, "nbf": now - 10, "iat": now,
                            "jti": uuid.uuid4().hex, "access": access})
        self.requests.append({"user": user, "ok": True, "scopes": q.get("scope", [])})
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# fault-injecting proxy --------------------------------------------------------------
@dataclass
class Fault:
    method: str
    path_contains: str
    action: str  # 500, 401bare, garbage, drop (half the body, then close), corrupt
    times: int = 1


class Proxy:
    """http.server on 127.0.0.1 forwarding to the registry; logs and injects faults."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.method == method and f.path_contains in path:
                    f.times -= 1
                    return f
        return None

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        method, path = h.command, h.path
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else None
        fault = self._fault_for(method, path)
        canned = {"500": (500, b"", {}), "401bare": (401, b"", {}),
                  "garbage": (200, b"this is not json {", {
                      "Content-Type": "application/vnd.oci.image.manifest.v1+json"})}
        if fault and fault.action in canned:
            status, payload, extra = canned[fault.action]
            self.log.append((method, path, status))
            h.send_response(status)
            for k, v in extra.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(payload)
            return
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() not in ("host", "connection", "content-length")}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            self.log.append((method, path, r.status))
            if fault and fault.action == "corrupt" and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            h.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() in ("location",):
                    v = v.replace(self.upstream, self.host)
                if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                    h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            if fault and fault.action == "drop":
                h.send_header("Connection", "close")
                h.end_headers()
                if method != "HEAD":
                    h.wfile.write(data[: len(data) // 2])
                    h.wfile.flush()
                h.close_connection = True
                with __import__("contextlib").suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
                return
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(data)
        finally:
            conn.close()

    def count(self, method: str, contains: str = "") -> int:
        return sum(1 for m, p, _ in self.log if m == method and contains in p)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# images -----------------------------------------------------------------------------
def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip tar layer; returns (blob bytes, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o755, 0
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def build_image(layout: Layout, layers: list[dict[str, bytes]], arch: str = "amd64",
                label: str = "") -> tuple[dict, dict, dict]:
    """Write config + layers + manifest into `layout`; returns (manifest, config, desc)."""
    descs, diff_ids = [], []
    for files in layers:
        blob, diff_id = make_layer(files)
        digest, size = layout.write_blob(blob)
        descs.append({"mediaType": OCI_LAYER_GZ, "digest": digest, "size": size})
        diff_ids.append(diff_id)
    config = {"architecture": arch, "os": "linux",
              "config": {"Cmd": ["/bin/sh"], "Labels": {"test": label}},
              "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": "cellbox test"} for _ in layers]}
    cdesc = layout.write_json(config, OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc,
                "layers": descs}
    mdesc = layout.write_json(manifest, OCI_MANIFEST)
    return manifest, config, mdesc


def busybox_layer_files() -> dict[str, bytes]:
    bb = Path("/bin/busybox")
    if not bb.exists():
        return {"bin/sh": b"#!fake\n"}
    return {"bin/busybox": bb.read_bytes()}


@dataclass
class LayoutImage:
    id: str
    manifest_digest: str
    refs: list[str]
    config: dict


class LayoutStore:
    """The slice of ImageStore the registry code uses, over a bare Layout (used when
    cellbox.runtime.images.store is not available)."""

    def __init__(self, root: Path):
        self.layout = Layout(root)

    def add_image(self, manifest: dict, config: dict, ref: str | None) -> LayoutImage:
        from cellbox.runtime.images.reference import normalize

        desc = self.layout.write_json(manifest, manifest.get("mediaType", OCI_MANIFEST))
        if ref:
            self.layout.set_ref(normalize(ref), desc)
        return LayoutImage(manifest["config"]["digest"], desc["digest"],
                           [ref] if ref else [], config)

    def resolve(self, ref: str) -> LayoutImage:
        from cellbox.runtime.errors import NotFound
        from cellbox.runtime.images.reference import normalize

        desc = self.layout.resolve_ref(normalize(ref))
        if desc is None:
            raise NotFound(f"no image {ref}")
        m = self.layout.read_json(desc["digest"])
        return LayoutImage(m["config"]["digest"], desc["digest"], [ref],
                           self.layout.read_json(m["config"]["digest"]))

    def tag(self, ref: str, manifest_digest: str) -> None:
        from cellbox.runtime.images.reference import normalize

        size = self.layout.blob_path(manifest_digest).stat().st_size
        self.layout.set_ref(normalize(ref), {"mediaType": OCI_MANIFEST,
                                             "digest": manifest_digest, "size": size})


def new_store(root: Path):
    """An ImageStore if the store module exists, else the LayoutStore stand-in."""
    try:
        from cellbox.runtime.images.store import ImageStore  # noqa: F401
    except ImportError:
        return LayoutStore(root)
    return ImageStore(root)


def tag_in_store(store, ref: str, manifest: dict, config: dict):
    return store.add_image(manifest, config, ref)


def skopeo() -> str:
    path = shutil.which("skopeo")
    if not path:
        pytest.skip("skopeo not installed (Debian package skopeo)")
    return path
