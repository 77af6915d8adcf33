"""Manifest media types, parsing, and picking a platform from an index."""

from __future__ import annotations

import hashlib
import json
import platform as _platform

from cellbox.runtime.images.layout import check_digest

from .errors import ManifestError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)

_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_platform() -> str:
    """This machine's platform as an OCI os/arch string, e.g. linux/amd64."""
    m = _platform.machine().lower()
    arch = _ARCH.get(m, m)
    variant = {"armv7l": "/v7", "armv6l": "/v6"}.get(m, "")
    return f"linux/{arch}{variant}"


def parse_manifest(raw: bytes, content_type: str | None, where: str) -> tuple[str, dict]:
    """Return (media type, manifest) after checking it is JSON of a type we handle."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"manifest for {where} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"manifest for {where} is not a JSON object")
    mt = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not mt or mt not in MANIFEST_TYPES + INDEX_TYPES:
        if "manifests" in doc:
            mt = OCI_INDEX
        elif "config" in doc and "layers" in doc:
            mt = OCI_MANIFEST
        else:
            raise ManifestError(f"manifest for {where} has unsupported type {mt or 'unknown'!r}")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(
            f"manifest for {where} has schemaVersion "
            f"{doc.get('schemaVersion')!r}; only 2 is supported"
        )
    if mt in INDEX_TYPES:
        if not isinstance(doc.get("manifests"), list):
            raise ManifestError(f"index for {where} has no manifests list")
        for d in doc["manifests"]:
            _check_descriptor(d, where)
    else:
        if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
            raise ManifestError(f"manifest for {where} lacks config or layers")
        for d in [doc["config"], *doc["layers"]]:
            _check_descriptor(d, where)
    return mt, doc


def _check_descriptor(d: object, where: str) -> None:
    if not isinstance(d, dict):
        raise ManifestError(f"manifest for {where} has a descriptor that is not an object")
    try:
        check_digest(d.get("digest", ""))
    except Exception:
        raise ManifestError(
            f"manifest for {where} names an invalid digest {d.get('digest')!r}"
        ) from None
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"manifest for {where} has a descriptor with invalid size {size!r}")


def _plat(d: dict) -> tuple[str, str, str]:
    p = d.get("platform") or {}
    return p.get("os", ""), p.get("architecture", ""), p.get("variant", "")


def select_platform(index: dict, want: str | None, where: str) -> dict:
    """The descriptor in `index` matching `want` ("os/arch[/variant]"; default: this host)."""
    want = want or host_platform()
    parts = want.split("/")
    if len(parts) < 2:
        raise ManifestError(f"invalid platform {want!r}: expected os/arch[/variant]")
    os_, arch = parts[0], parts[1]
    variant = parts[2] if len(parts) > 2 else ""
    candidates = [
        d
        for d in index.get("manifests", [])
        if d.get("mediaType", OCI_MANIFEST) in MANIFEST_TYPES and _plat(d)[:2] == (os_, arch)
    ]
    exact = [d for d in candidates if not variant or _plat(d)[2] in (variant, "")]
    exact.sort(key=lambda d: _plat(d)[2] != variant)  # exact variant match first
    if not exact:
        have = sorted({"/".join(x for x in _plat(d) if x) for d in index.get("manifests", [])})
        raise ManifestError(f"{where} has no image for {want} (has: {', '.join(have) or 'none'})")
    return exact[0]


def blobs_of(manifest: dict) -> list[dict]:
    """Config then layer descriptors of an image manifest."""
    return [manifest["config"], *manifest["layers"]]
