"""One registry host: where it is, how to authenticate, redirects and retries.

Every request names the token scopes it needs (``repository:NAME:pull``…); the
:class:`~ocikit.client.auth.Authenticator` turns those into an ``Authorization`` header.
Redirects are followed for GET and HEAD only, and the header is dropped as soon as a redirect
leaves the registry's origin: blob downloads are often redirected to object storage or a CDN,
which must never see the user's registry token (distribution-spec, "API").
"""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.parse
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import Final

from ..store.transport import TransportError
from .auth import Authenticator
from .credentials import Credentials, find_credentials
from .errors import AuthenticationError, error_from_response
from .http import ConnectionFailed, HttpClient, Origin, Response
from .options import ClientOptions

__all__ = ["DOCKER_HUB_ENDPOINT", "RegistryClient", "pull_scope", "push_scope"]

#: Docker Hub's API lives on another host than the name people use.
DOCKER_HUB_ENDPOINT: Final = "registry-1.docker.io"
_MAX_REDIRECTS: Final = 5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER: Final = 30.0
_log = logging.getLogger("ocikit.client")


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class RegistryClient:
    """Requests to one registry, authenticated and retried. Safe for concurrent use.

    ``registry`` is the host as written in references (``docker.io``, ``localhost:5000``).
    ``http`` may be shared between clients; it is closed by :meth:`aclose` only when this
    client made it.
    """

    def __init__(
        self,
        registry: str,
        options: ClientOptions | None = None,
        *,
        http: HttpClient | None = None,
        repository: str | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        self.registry = registry
        self.endpoint = DOCKER_HUB_ENDPOINT if registry == "docker.io" else registry
        tls = self.options.use_tls(self.endpoint)
        self.base_url = f"{'https' if tls else 'http'}://{self.endpoint}"
        self.origin, _ = Origin.of(self.base_url)
        self._owns_http = http is None
        self.http = http or HttpClient(
            ssl_context=self.options.ssl_context(self.endpoint) if tls else None,
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
            user_agent=self.options.user_agent,
        )
        self._repository = repository
        self.auth = Authenticator(registry, self.http, self._credentials, plain_http_registry=not tls)
        self._warned: set[str] = set()

    async def _credentials(self) -> Credentials | None:
        if self.options.credentials is not None:
            user, password = self.options.credentials
            return Credentials(user, password, source="--creds")
        return await asyncio.to_thread(
            find_credentials, self.registry, self._repository, self.options.authfile
        )

    def url(self, path: str) -> str:
        """An absolute URL for an API path, or a ``Location`` the registry sent (often relative)."""
        return urllib.parse.urljoin(self.base_url + "/", path)

    async def request(
        self,
        method: str,
        path: str,
        *,
        scopes: Sequence[str],
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | AsyncIterable[bytes] | None = None,
        content_length: int | None = None,
    ) -> Response:
        """Send a request and return the final response (after auth and redirects), whatever its
        status. Requests without a streamed body are retried on connection failures and on
        429/5xx answers, with backoff and ``Retry-After``."""
        replayable = body is None or isinstance(body, bytes)
        attempts = 1 + (self.options.retries if replayable else 0)
        headers = list(headers)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._send(method, self.url(path), scopes, headers, body, content_length)
            except ConnectionFailed as exc:
                if last or not exc.retryable:
                    raise
                await asyncio.sleep(_backoff(attempt))
                continue
            self._report_warnings(response.headers.get_list("warning"))
            if response.status in _RETRY_STATUS and not last:
                delay = _retry_after(response.headers.get("retry-after")) or _backoff(attempt)
                await response.aclose()
                await asyncio.sleep(delay)
                continue
            return response
        raise AssertionError("unreachable")

    def _report_warnings(self, values: list[str]) -> None:
        """Registry ``Warning: 299 - "text"`` headers, logged once each (distribution-spec,
        "Warnings": report them, never act on them)."""
        for value in values:
            code, _, rest = value.partition(" ")
            text = rest.partition(" ")[2].strip().strip('"')
            if code == "299" and text and text not in self._warned:
                self._warned.add(text)
                _log.warning("%s: %s", self.registry, text[:1000])

    async def _send(
        self,
        method: str,
        url: str,
        scopes: Sequence[str],
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        content_length: int | None,
    ) -> Response:
        authorization = await self.auth.authorization(scopes)
        challenged = False
        left_origin = False
        for _ in range(_MAX_REDIRECTS + 1):
            # Security: once a redirect leaves the registry's origin, no later hop of this
            # request carries the registry's Authorization, not even one that comes back.
            left_origin = left_origin or Origin.of(url)[0] != self.origin
            carried = None if left_origin else authorization
            response = await self.http.request(
                method,
                url,
                headers=headers if carried is None else [*headers, ("Authorization", carried)],
                body=body,
                content_length=content_length,
            )
            if response.status == 401 and not left_origin and not challenged:
                challenged = True
                retry_scopes = await self.auth.on_challenge(
                    response.headers.get_list("www-authenticate"), scopes, carried
                )
                if retry_scopes is not None and (body is None or isinstance(body, bytes)):
                    await response.aclose()
                    authorization = await self.auth.authorization(retry_scopes)
                    continue
            location = response.headers.get("location")
            if response.status in _REDIRECTS and location and method in ("GET", "HEAD"):
                await response.aclose()
                url = urllib.parse.urljoin(url, location)
                continue
            return response
        await response.aclose()
        raise TransportError(f"{method} {url}: more than {_MAX_REDIRECTS} redirects")

    async def expect(self, response: Response, ok: Iterable[int], what: str) -> Response:
        """``response`` when its status is in ``ok``, else the registry's error, raised."""
        if response.status in ok:
            return response
        error = await error_from_response(response, what)
        if isinstance(error, AuthenticationError) and await self.auth.credentials() is None:
            raise AuthenticationError(
                f"{error} (no credentials for {self.registry}: "
                f"run `ocikit login {self.registry}` or pass --creds)",
                status=error.status,
                codes=error.codes,
            )
        raise error

    async def check_login(self) -> bool:
        """Verify credentials against ``/v2/`` (for ``ocikit login``). True when the registry
        asked for them and accepted them, False when it asks for none at all."""
        response = await self.request("GET", "/v2/", scopes=[])
        await self.expect(response, (200,), f"log in to {self.registry}")
        await response.aclose()
        return self.auth.scheme is not None

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()


def _backoff(attempt: int) -> float:
    return min(0.25 * (1 << attempt), 4.0) * (0.75 + random.random() / 2)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return None  # an HTTP date: use our own backoff rather than trust a clock
