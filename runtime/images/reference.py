"""Image references parsed as Docker parses them (distribution/reference grammar).

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ["/" path-component]*
    domain     := host [":" port]
    path-comp  := [a-z0-9]+ (([_.]|__|-+) [a-z0-9]+)*
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex

Short names get `docker.io/library/`; `.familiar` shortens them back, `.canonical` is
the full form stored in the index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cellbox.runtime.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN_RE = re.compile(rf"^{_HOST}(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
_ALGORITHMS = {"sha256", "sha384", "sha512"}


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """registry/repository, no tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        if self.registry == DEFAULT_DOMAIN:
            repo = self.repository
            if repo.startswith(OFFICIAL_PREFIX) and "/" not in repo[len(OFFICIAL_PREFIX) :]:
                repo = repo[len(OFFICIAL_PREFIX) :]
            return repo
        return self.name

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def canonical(self) -> str:
        return self.name + self._suffix()

    @property
    def familiar(self) -> str:
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        return self.canonical


def _split_domain(name: str) -> tuple[str, str]:
    i = name.find("/")
    first = name[:i]
    if i == -1 or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, name[i + 1 :]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse_reference(s: str, default_tag: str | None = "latest") -> Reference:
    """Parse a Docker image reference; a name alone gets `default_tag` (None: keep none)."""
    if not isinstance(s, str) or not s:
        raise InvalidArgument("invalid reference format: empty reference")
    if s != s.strip() or any(c.isspace() for c in s):
        raise InvalidArgument(f"invalid reference format: {s!r} contains whitespace")
    rest, digest = s, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise InvalidArgument(f"invalid reference format: bad digest {digest!r} in {s!r}")
        if digest.startswith("sha256:") and not _SHA256_RE.match(digest):
            raise InvalidArgument(f"invalid reference format: bad sha256 digest {digest!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(
                f"invalid reference format: bad tag {tag!r} in {s!r} "
                "(allowed: [A-Za-z0-9_.-], not starting with . or -, at most 128)"
            )
    if not rest:
        raise InvalidArgument(f"invalid reference format: empty name in {s!r}")
    if len(rest) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(f"invalid reference format: name longer than {NAME_TOTAL_LENGTH_MAX}")
    domain, path = _split_domain(rest)
    if domain != DEFAULT_DOMAIN and not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid reference format: bad registry host {domain!r} in {s!r}")
    if not _PATH_RE.match(path):
        if path.lower() != path:
            raise InvalidArgument(
                f"invalid reference format: repository name {path!r} must be lowercase"
            )
        raise InvalidArgument(
            f"invalid reference format: bad repository name {path!r} in {s!r} "
            "(lowercase letters, digits and separators . _ __ - between them)"
        )
    if domain == DEFAULT_DOMAIN and path.startswith(OFFICIAL_PREFIX):
        short = path[len(OFFICIAL_PREFIX) :]
        # "sha256:<hex>" would read as an image id, a 64-hex name as one too (Docker
        # refuses both: "cannot specify 64-byte hexadecimal strings", "ambiguous tag")
        if short in _ALGORITHMS:
            raise InvalidArgument(
                f"invalid reference format: repository name {short!r} is a digest algorithm: "
                f"{s!r} would be read as an image id"
            )
        if _HEX64_RE.match(short):
            raise InvalidArgument(
                f"invalid repository name {short!r}: cannot specify 64-byte hexadecimal strings"
            )
    if tag is None and digest is None:
        tag = default_tag
    return Reference(domain, path, tag, digest)


def normalize(s: str) -> str:
    """The canonical string for a reference (adds :latest to a bare name)."""
    return parse_reference(s).canonical


def familiar(canonical: str) -> str:
    """The short form of a stored canonical reference, or the input if it does not parse."""
    try:
        return parse_reference(canonical, default_tag=None).familiar
    except InvalidArgument:
        return canonical


def looks_like_reference(s: str) -> bool:
    try:
        parse_reference(s)
    except InvalidArgument:
        return False
    return True
