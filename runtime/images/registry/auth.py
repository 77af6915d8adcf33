"""Registry authentication: basic, and bearer tokens from a WWW-Authenticate challenge.

The first 401 tells us the scheme; after that headers are added up front, so each
request costs one round trip. Tokens are cached per (realm, service, scopes) until
they expire.
"""

from __future__ import annotations

import re
import threading
import time

import requests

from .errors import AuthError, RegistryUnreachable

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]] | None:
    """Parse `Bearer realm="..",service="..",scope=".."` into ("bearer", {...})."""
    if not header:
        return None
    m = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*(.*)$", header, re.S)
    if not m:
        return None
    scheme, rest = m.group(1).lower(), m.group(2)
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        pm = _PARAM_RE.match(rest, pos)
        if not pm or pm.end() == pos:
            break
        key, val = pm.group(1).lower(), pm.group(2)
        if val.startswith('"'):
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        params[key] = val
        pos = pm.end()
    return scheme, params


class Authenticator:
    """Adds credentials to requests for one registry, learning the scheme from a 401."""

    def __init__(
        self,
        session: requests.Session,
        registry: str,
        credentials: tuple[str, str] | None,
        verify: bool = True,
    ):
        self._session = session
        self.registry = registry
        self.credentials = credentials
        self._verify = verify
        self.scheme: str | None = None
        self._params: dict[str, str] = {}
        self._tokens: dict[tuple, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def headers(self, scopes: tuple[str, ...]) -> dict[str, str]:
        """Authorization header for a request needing `scopes` (empty if none known yet)."""
        if self.scheme == "basic" and self.credentials:
            return {"Authorization": _basic(self.credentials)}
        if self.scheme == "bearer":
            return {"Authorization": "Bearer " + self._token(scopes)}
        return {}

    def on_401(
        self, response: requests.Response, scopes: tuple[str, ...], sent: dict[str, str]
    ) -> tuple[str, ...]:
        """Learn from a 401; return the scopes to retry with, or raise AuthError."""
        parsed = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        where = f"registry {self.registry}"
        if parsed is None or parsed[0] not in ("basic", "bearer"):
            raise AuthError(f"{where} answered 401 with no usable authentication challenge")
        scheme, params = parsed
        if scheme == "basic":
            if not self.credentials:
                raise AuthError(f"{where} requires a login (cellbox login {self.registry})")
            if sent.get("Authorization", "").startswith("Basic "):
                raise AuthError(f"{where} rejected the username or password")
            self.scheme = "basic"
            return scopes
        if not params.get("realm"):
            raise AuthError(f"{where} answered 401 with a bearer challenge without a realm")
        extra = tuple(s for s in params.get("scope", "").split(" ") if s)
        want = tuple(sorted(set(scopes) | set(extra)))
        if sent.get("Authorization", "").startswith("Bearer ") and self.scheme == "bearer":
            key = self._key(want)
            if key in self._tokens:  # the token we had for exactly these scopes was refused
                detail = "check your login" if self.credentials else "a login may be needed"
                raise AuthError(f"{where} denied access to {' '.join(want) or '/v2/'} ({detail})")
        self.scheme = "bearer"
        self._params = params
        return want

    def _key(self, scopes: tuple[str, ...]) -> tuple:
        return (self._params.get("realm"), self._params.get("service"), tuple(sorted(set(scopes))))

    def _token(self, scopes: tuple[str, ...]) -> str:
        key = self._key(scopes)
        with self._lock:
            hit = self._tokens.get(key)
            if hit and hit[1] > time.monotonic():
                return hit[0]
            token, ttl = self._fetch(key[2])
            self._tokens[key] = (token, time.monotonic() + max(ttl - 10, 1))
            return token

    def _fetch(self, scopes: tuple[str, ...]) -> tuple[str, float]:
        query: list[tuple[str, str]] = []
        if self._params.get("service"):
            query.append(("service", self._params["service"]))
        query += [("scope", s) for s in scopes]
        if self.credentials:
            query.append(("account", self.credentials[0]))
        realm = self._params["realm"]
        try:
            r = self._session.get(
                realm, params=query, timeout=30, verify=self._verify, auth=self.credentials
            )
        except requests.RequestException as e:
            raise RegistryUnreachable(
                f"token server {realm} unreachable: {type(e).__name__}"
            ) from None
        if r.status_code in (401, 403):
            raise AuthError(
                f"token server for {self.registry} rejected the username or password"
                if self.credentials
                else f"token server for {self.registry} refused anonymous access"
            )
        if r.status_code != 200:
            raise AuthError(f"token server {realm} answered HTTP {r.status_code}")
        try:
            body = r.json()
        except ValueError:
            raise AuthError(f"token server {realm} answered something that is not JSON") from None
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"token server {realm} answered without a token")
        try:
            ttl = float(body.get("expires_in") or 60)
        except (TypeError, ValueError):
            ttl = 60.0
        return token, ttl


def _basic(cred: tuple[str, str]) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{cred[0]}:{cred[1]}".encode()).decode()
