"""Image references normalized as Docker does."""

import pytest
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.images.reference import familiar, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text,canonical,fam",
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("docker.io/library/busybox:x", "docker.io/library/busybox:x", "busybox:x"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", "127.0.0.1:5000/app:latest"),
        ("quay.io/org/x-y__z.w", "quay.io/org/x-y__z.w:latest", "quay.io/org/x-y__z.w:latest"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
        (f"busybox:1@{D}", f"docker.io/library/busybox:1@{D}", f"busybox:1@{D}"),
        (
            "Registry.Example.com/app:T_1",
            "Registry.Example.com/app:T_1",
            "Registry.Example.com/app:T_1",
        ),
    ],
)
def test_parse(text, canonical, fam):
    r = parse_reference(text)
    assert r.canonical == canonical
    assert r.familiar == fam
    assert familiar(canonical) == fam


def test_fields():
    r = parse_reference("localhost:5000/a/b:v1")
    assert (r.registry, r.repository, r.tag, r.digest) == ("localhost:5000", "a/b", "v1", None)
    assert parse_reference("x", default_tag=None).tag is None


@pytest.mark.parametrize(
    "bad,why",
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("user/App", "lowercase"),
        ("busybox:", "bad tag"),
        ("busybox:-x", "bad tag"),
        ("busybox:" + "a" * 129, "bad tag"),
        ("busybox:a/b", "registry host"),
        (":tag", "empty name"),
        ("a//b", "repository"),
        ("a_", "repository"),
        ("-a", "repository"),
        ("a b", "whitespace"),
        ("busybox@sha256:abc", "digest"),
        ("a" * 256, "longer"),
        ("bad_host:5000/x", "registry host"),
    ],
)
def test_invalid(bad, why):
    with pytest.raises(InvalidArgument, match=why):
        parse_reference(bad)


@pytest.mark.parametrize(
    "ambiguous", ["sha256:" + "0" * 64, "sha256:abc", "sha256", "0" * 64, "f" * 64 + ":v1", "docker.io/library/sha256:1"]
)
def test_names_that_read_as_image_ids_are_refused(ambiguous):
    """`sha256:<hex>` and a 64-hex name would be taken for an image id (Docker refuses both)."""
    with pytest.raises(InvalidArgument, match="digest algorithm|64-byte hexadecimal"):
        parse_reference(ambiguous)
    # a repository merely named so inside a namespace or on a registry is not ambiguous
    assert parse_reference("user/sha256:1").canonical == "docker.io/user/sha256:1"
    assert parse_reference("localhost:5000/" + "0" * 64).repository == "0" * 64
