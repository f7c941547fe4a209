"""Registry authentication driven by ``WWW-Authenticate``: Basic, and the Bearer token flow.

A registry says how to authenticate in its 401 answer. For ``Bearer`` it names a token service
(``realm``), the ``service`` to ask it for, and the ``scope`` that request needed; the client
fetches a token for the scopes it is about to use (anonymously, or with the user's credentials)
and retries. Tokens are kept per set of scopes until shortly before they expire, so a pull of a
hundred layers asks the token service once. Once a registry's challenge is known, later requests
send the right ``Authorization`` up front instead of paying a 401 round trip each.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec

from ..store.transport import TransportError
from .credentials import Credentials
from .errors import AuthenticationError, error_from_response
from .http import HttpClient
from .options import is_loopback

__all__ = ["Authenticator", "Challenge", "parse_challenges"]

_TOKEN_CHARS: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Docker's rule: a token service that gives no lifetime (or a shorter one) means 60 seconds.
_MIN_TOKEN_LIFETIME: Final = 60
_EXPIRY_MARGIN: Final = 10
_TOKEN_RESPONSE_LIMIT: Final = 1 << 20


class Challenge(msgspec.Struct, frozen=True):
    scheme: str  # lower case: "bearer", "basic", …
    params: dict[str, str] = msgspec.field(default_factory=dict)


def _skip(value: str, index: int, chars: str) -> int:
    while index < len(value) and value[index] in chars:
        index += 1
    return index


def _quoted(value: str, index: int) -> tuple[str, int]:
    """The quoted-string starting at ``value[index] == '"'``, unescaped, and the index after it."""
    out = []
    index += 1
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            out.append(value[index + 1])
            index += 2
        elif char == '"':
            return "".join(out), index + 1
        else:
            out.append(char)
            index += 1
    return "".join(out), index


def parse_challenges(values: Sequence[str]) -> list[Challenge]:
    """Every challenge in ``WWW-Authenticate`` header values (RFC 9110 section 11.6.1).

    Quoted values may contain commas (``scope="repository:a:pull,push"``), so this is a small
    scanner rather than a split on ','.
    """
    found: list[Challenge] = []
    for value in values:
        index, current = 0, None
        while index < len(value):
            index = _skip(value, index, " \t,")
            match = _TOKEN_CHARS.match(value, index)
            if match is None:
                break  # malformed: keep what was understood
            name, index = match.group(), match.end()
            after = _skip(value, index, " \t")
            if current is not None and after < len(value) and value[after] == "=":
                index = _skip(value, after + 1, " \t")
                if index < len(value) and value[index] == '"':
                    text, index = _quoted(value, index)
                else:
                    token = _TOKEN_CHARS.match(value, index)
                    text, index = (token.group(), token.end()) if token else ("", index)
                current.params[name.lower()] = text
            else:
                current = Challenge(name.lower())
                found.append(current)
    return found


def _split_scope(scope: str) -> tuple[str, set[str]]:
    """``repository:a/b:pull,push`` -> (``repository:a/b``, {pull, push})."""
    resource, _, actions = scope.rpartition(":")
    return resource, set(actions.split(","))


def _covered(needed: str, held: set[str]) -> bool:
    """Whether a scope in ``held`` grants at least what ``needed`` asks: a challenge for
    ``pull`` is answered by the ``pull,push`` token a push already uses, not by a second one."""
    resource, actions = _split_scope(needed)
    return any(r == resource and actions <= a for r, a in map(_split_scope, held))


def _basic(credentials: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode(
        "ascii"
    )


class _Token(msgspec.Struct):
    value: str
    expires: float


class Authenticator:
    """The authentication state of one registry: its challenge, the user's credentials and the
    tokens obtained so far. Shared by every request to that registry, concurrently."""

    def __init__(
        self,
        registry: str,
        http: HttpClient,
        load_credentials: Callable[[], Awaitable[Credentials | None]],
        *,
        plain_http_registry: bool,
    ) -> None:
        self.registry = registry
        self._http = http
        self._load_credentials = load_credentials
        self._credentials: Credentials | None = None
        self._credentials_loaded = False
        self._plain_http_registry = plain_http_registry
        self._scheme: str | None = None
        self._realm = ""
        self._service: str | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._locks: dict[frozenset[str], asyncio.Lock] = {}
        #: How many tokens were fetched: observable, so reuse can be checked.
        self.token_requests = 0

    @property
    def scheme(self) -> str | None:
        """``"bearer"`` or ``"basic"`` once the registry has challenged, else None."""
        return self._scheme

    async def credentials(self) -> Credentials | None:
        if not self._credentials_loaded:
            self._credentials = await self._load_credentials()
            self._credentials_loaded = True
        return self._credentials

    async def authorization(self, scopes: Sequence[str]) -> str | None:
        """The ``Authorization`` value to send with a request needing ``scopes``, once the
        registry's challenge is known; None before that or when it needs none."""
        if self._scheme == "basic":
            credentials = await self.credentials()
            return _basic(credentials) if credentials else None
        if self._scheme == "bearer":
            return "Bearer " + await self._token(frozenset(scopes))
        return None

    async def on_challenge(
        self, values: Sequence[str], scopes: Sequence[str], sent: str | None
    ) -> list[str] | None:
        """Learn from a 401's ``WWW-Authenticate`` to a request that carried ``sent`` as its
        ``Authorization`` (None: nothing). Returns the scopes to retry with (those asked for plus
        any the challenge names), or None when retrying cannot succeed.

        Concurrent requests all meet the first challenge; only a refused token is thrown away,
        so they share the one token the first of them fetches."""
        challenges = {challenge.scheme: challenge for challenge in parse_challenges(values)}
        if not challenges:
            return None  # a 401 that says nothing about how to authenticate: report it as is
        if "bearer" in challenges:
            challenge = challenges["bearer"]
            realm = challenge.params.get("realm", "")
            if not realm:
                raise AuthenticationError(f"{self.registry}: the Bearer challenge names no token realm")
            self._scheme, self._realm = "bearer", realm
            self._service = challenge.params.get("service")
            wanted = set(scopes)
            for needed in (challenge.params.get("scope") or "").split():
                if not _covered(needed, wanted):
                    wanted.add(needed)
            key = frozenset(wanted)
            cached = self._tokens.get(key)
            if cached is not None and sent == f"Bearer {cached.value}":
                if challenge.params.get("error") == "insufficient_scope":
                    return None  # a fresh token would carry the same grant
                del self._tokens[key]
            await self._token(key)
            return sorted(key)
        if "basic" in challenges:
            self._scheme = "basic"
            if await self.credentials() is None:
                raise AuthenticationError(
                    f"{self.registry} requires credentials: "
                    f"run `ocikit login {self.registry}` or pass --creds",
                    status=401,
                )
            return None if sent is not None else list(scopes)  # sent and refused: wrong password
        offered = ", ".join(challenges) or "none"
        raise AuthenticationError(
            f"{self.registry}: unsupported authentication scheme(s): {offered}", status=401
        )

    async def _token(self, key: frozenset[str]) -> str:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent requests for the same scopes share one token request
            token = self._tokens.get(key)
            if token is not None and token.expires > time.monotonic():
                return token.value
            token = await self._fetch_token(key)
            self._tokens[key] = token
            return token.value

    async def _fetch_token(self, scopes: frozenset[str]) -> _Token:
        credentials = await self.credentials()
        realm = self._realm
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuthenticationError(f"{self.registry}: the token realm {realm!r} is not an http(s) URL")
        if credentials is not None and parts.scheme == "http":
            realm_host = parts.netloc
            # Security: a secret goes over plain HTTP only where the user already accepted plain
            # HTTP for the registry itself (loopback or --plain-http), never to a remote realm.
            if not (self._plain_http_registry or is_loopback(realm_host)):
                raise AuthenticationError(
                    f"{self.registry}: refusing to send credentials to the plain-HTTP token realm {realm}"
                )
        query: list[tuple[str, str]] = []
        if self._service:
            query.append(("service", self._service))
        query += [("scope", scope) for scope in sorted(scopes) if scope]
        headers: list[tuple[str, str]] = []
        self.token_requests += 1
        if credentials is not None and credentials.identity_token:
            form = [*query, ("grant_type", "refresh_token"), ("refresh_token", credentials.identity_token)]
            form.append(("client_id", "ocikit"))
            body = urllib.parse.urlencode(form).encode()
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            response = await self._http.request("POST", realm, headers=headers, body=body)
        else:
            if credentials is not None:
                headers.append(("Authorization", _basic(credentials)))
            separator = "&" if parts.query else "?"
            url = realm + (separator + urllib.parse.urlencode(query) if query else "")
            response = await self._http.request("GET", url, headers=headers)
        if response.status != 200:
            who = f"as {credentials.username or 'identity token'}" if credentials else "anonymously"
            error = await error_from_response(response, f"{self.registry}: token request {who} to {realm}")
            raise AuthenticationError(str(error), status=response.status, codes=error.codes)
        raw = await response.read(_TOKEN_RESPONSE_LIMIT)
        return self._parse_token(raw)

    def _parse_token(self, raw: bytes) -> _Token:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise TransportError(
                f"{self.registry}: the token service answered something that is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise TransportError(
                f"{self.registry}: the token service answered {type(data).__name__}, not an object"
            )
        value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise TransportError(f"{self.registry}: the token service's answer has no token")
        if not (value.isascii() and value.isprintable()):  # it goes into a header as it is
            raise TransportError(f"{self.registry}: the token service's token is not printable ASCII")
        lifetime = data.get("expires_in")
        if not isinstance(lifetime, int | float) or lifetime < _MIN_TOKEN_LIFETIME:
            lifetime = _MIN_TOKEN_LIFETIME
        return _Token(value, time.monotonic() + float(lifetime) - _EXPIRY_MARGIN)
