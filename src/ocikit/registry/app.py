"""The registry as an ASGI application: routing, lifecycle, logging and the shared helpers
that handlers use. Handlers (``blobs``, ``uploads``, ``manifests``, ``discovery``) only
translate HTTP into storage calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from ..spec.digest import Digest, DigestError
from ..spec.reference import is_valid_repository
from . import audit, maintenance
from .auth.access import AccessControl
from .auth.configure import access_from_settings
from .errors import RegistryError
from .hooks import Action, Authorizer, Event, EventHook, allow_all
from .http import ClientDisconnected, Receive, Request, Response, Scope, Send
from .idle import Peer, peer_of
from .logs import AccessLog
from .proxies import ForwardedFor
from .settings import Settings
from .storage import blob_store_for, metadata_store_for
from .storage.base import BlobStore, MetadataStore, StorageUnavailable

if TYPE_CHECKING:
    from .auth.endpoint import TokenEndpoint

__all__ = ["Registry", "create_app"]

log = logging.getLogger("ocikit.registry")

Handler = Callable[["Registry", Request, str, str], Awaitable[Response]]

_API_VERSION: Final = ("docker-distribution-api-version", "registry/2.0")
_MAX_WARNING_BYTES: Final = 4096
_CLOSE: Final = ("connection", "close")
_OVERLOADED: Final = RegistryError(
    "TOOMANYREQUESTS", "the server is at its connection limit, retry shortly", status=503
)
#: The request being answered, for event hooks that record who did what.
current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "ocikit_request", default=None
)

_ROUTES: Final = [
    (re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/?$"), "uploads"),
    (re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<arg>[^/]+)$"), "upload"),
    (re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<arg>[^/]+)$"), "blob"),
    (re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<arg>[^/]+)$"), "manifest"),
    (re.compile(r"^/v2/(?P<name>.+)/tags/list$"), "tags"),
    (re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<arg>[^/]+)$"), "referrers"),
]


def _handlers() -> dict[tuple[str, str], Handler]:
    from . import blobs, discovery, manifests, uploads

    return {
        ("uploads", "POST"): uploads.start,
        ("upload", "GET"): uploads.status,
        ("upload", "PATCH"): uploads.patch,
        ("upload", "PUT"): uploads.finish,
        ("upload", "DELETE"): uploads.cancel,
        ("blob", "GET"): blobs.get,
        ("blob", "HEAD"): blobs.get,
        ("blob", "DELETE"): blobs.delete,
        ("manifest", "GET"): manifests.get,
        ("manifest", "HEAD"): manifests.get,
        ("manifest", "PUT"): manifests.put,
        ("manifest", "DELETE"): manifests.delete,
        ("tags", "GET"): discovery.tags,
        ("referrers", "GET"): discovery.referrers,
    }


class Registry:
    """An OCI distribution-spec registry: call it as an ASGI app, or mount it in one.

    Storage opens on the ASGI lifespan startup or, when mounted inside an application that
    does not forward lifespan events, on the first request.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        blobs: BlobStore | None = None,
        metadata: MetadataStore | None = None,
        authorize: Authorizer | None = None,
        event_hooks: Sequence[EventHook] = (),
    ) -> None:
        self.settings = settings or Settings()
        self.blobs: BlobStore = blobs if blobs is not None else blob_store_for(self.settings)
        self.metadata: MetadataStore = metadata if metadata is not None else metadata_store_for(self.settings)
        #: The access control built from the settings (None: open, or ``authorize`` was given).
        self.access: AccessControl | None = None
        self.token_endpoint: TokenEndpoint | None = None
        if authorize is None:
            configured = access_from_settings(self.settings)
            if configured is not None:
                self.access, self.token_endpoint = configured.access, configured.token_endpoint
            authorize = self.access or allow_all
        self.authorize_hook = authorize
        self.event_hooks = list(event_hooks)
        self._handlers = _handlers()
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._background: list[asyncio.Task[None]] = []
        self._static_warnings = _warning_headers(self.settings.warnings)
        self._access_log = AccessLog(self.settings.log_format) if self.settings.access_log else None
        self._forwarded = (
            ForwardedFor(self.settings.trusted_proxies) if self.settings.trusted_proxies else None
        )
        self._active = 0
        #: Requests in progress per peer (address, port): the sweep of silent connections
        #: (:mod:`.idle`) never cuts a connection with a request in progress.
        self.requests_in_progress: Counter[Peer] = Counter()

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        async with self._open_lock:
            if self._opened:
                return
            await self.blobs.open()
            await self.metadata.open()
            self._opened = True
            self._background = maintenance.start_background(self)

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._opened:
            await self.metadata.close()
            await self.blobs.close()
            self._opened = False
        if self._access_log is not None:
            self._access_log.flush()

    async def __aenter__(self) -> Registry:
        await self.startup()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.shutdown()

    # ---------------------------------------------------------- shared helpers

    async def authorize(self, request: Request, repository: str | None, action: Action) -> None:
        await self.authorize_hook(request, repository, action)

    @property
    def filters_listings(self) -> bool:
        """Whether listings must be cut to what the caller may pull (not for ``allow_all``)."""
        return self.authorize_hook is not allow_all

    async def may(self, request: Request, repository: str, action: Action) -> bool:
        """Whether the caller may, where a refusal is no error: choosing a mount's source. As
        for a request to ``repository`` itself, a bearer token must grant it (a client that
        mounts asks for pull on the source) and the policy must permit it."""
        if isinstance(self.authorize_hook, AccessControl):
            return await self.authorize_hook.may(request, repository, action)
        return await self._hook_allows(request, repository, action)

    async def lists(self, request: Request, repository: str) -> bool:
        """Whether the catalog shows ``repository`` to the caller: with access control, a
        token's ``registry:catalog:*`` grant stands for every repository its user may pull,
        since no client asks a token for each repository it might list."""
        if isinstance(self.authorize_hook, AccessControl):
            return await self.authorize_hook.lists(request, repository)
        return await self._hook_allows(request, repository, "pull")

    async def _hook_allows(self, request: Request, repository: str, action: Action) -> bool:
        try:
            await self.authorize_hook(request, repository, action)
        except RegistryError as error:
            if error.code in ("UNAUTHORIZED", "DENIED"):
                return False
            raise
        return True

    async def emit(self, event: Event) -> None:
        if self.settings.audit_log:
            audit.record(event, current_request.get())
        for hook in self.event_hooks:
            try:
                await hook(event)
            except Exception:  # a failing webhook must never fail the push it reports
                log.exception("event hook failed for %s", event)

    @staticmethod
    def parse_digest(text: str) -> Digest:
        try:
            return Digest(text)
        except DigestError as exc:
            raise RegistryError("DIGEST_INVALID", str(exc)) from None

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if not self._opened:
            await self.startup()
        client = scope.get("client")
        peer = peer_of(client[0], client[1]) if client else ("", 0)
        self.requests_in_progress[peer] += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            if left := self.requests_in_progress[peer] - 1:
                self.requests_in_progress[peer] = left
            else:
                del self.requests_in_progress[peer]

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if self._forwarded is not None:
            self._forwarded.apply(scope)
        if self._active >= self.settings.max_connections:
            response = self._error_response(_OVERLOADED)
            response.headers += [("retry-after", "1"), _CLOSE]
        else:
            self._active += 1
            try:
                response = await self._respond(Request(scope, receive, self.settings.body_timeout))
            finally:
                self._active -= 1
        response.headers.append(_API_VERSION)
        spent = sum(len(value) for name, value in response.headers if name == "warning")
        response.headers.extend(_within_budget(self._static_warnings, _MAX_WARNING_BYTES - spent))
        sent = await response.send(send, head=scope["method"] == "HEAD")
        if self._access_log is not None:
            self._access_log.record(scope, response.status, sent, time.perf_counter() - started)

    @staticmethod
    def _error_response(error: RegistryError) -> Response:
        return Response(
            status=error.status,
            headers=[("content-type", "application/json"), *error.headers],
            body=error.body(),
        )

    async def _respond(self, request: Request) -> Response:
        """The handler's response; an error's, with the connection closed when the client
        stalled or left an unread body too large to wait for."""
        current_request.set(request)
        try:
            return await self._dispatch(request)
        except RegistryError as error:
            response = self._error_response(error)
        except ClientDisconnected:  # the body is incomplete: the connection cannot be reused
            return Response(status=408 if request.stalled else 400, headers=[_CLOSE])
        except StorageUnavailable as exc:
            log.warning("%s %s: %s", request.method, request.path, exc)
            response = self._error_response(RegistryError("UNAVAILABLE", str(exc)))
            response.headers.append(("retry-after", "1"))
        except Exception:
            log.exception("unhandled error for %s %s", request.method, request.path)
            response = self._error_response(RegistryError("UNSUPPORTED", "internal error", status=500))
        try:
            reusable = await request.drain()
        except ClientDisconnected:
            reusable = False
        if not reusable:
            response.headers.append(_CLOSE)
        return response

    async def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path in ("/v2/", "/v2"):
            if request.method not in ("GET", "HEAD"):
                raise RegistryError("UNSUPPORTED", f"{request.method} is not allowed here")
            await self.authorize(request, None, "pull")
            return Response.json({})
        if path == "/v2/_catalog":
            from . import discovery

            if request.method != "GET":
                raise RegistryError("UNSUPPORTED", f"{request.method} is not allowed here")
            return await discovery.catalog(self, request, "", "")
        if path == "/token" and self.token_endpoint is not None:
            return await self.token_endpoint(request)
        for pattern, route in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            name = match["name"]
            if not is_valid_repository(name):
                raise RegistryError("NAME_INVALID", f"invalid repository name {name!r}")
            handler = self._handlers.get((route, request.method))
            if handler is None:
                raise RegistryError("UNSUPPORTED", f"{request.method} is not allowed on this endpoint")
            return await handler(self, request, name, match.groupdict().get("arg") or "")
        raise RegistryError("UNSUPPORTED", f"no endpoint at {path}", status=404)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _warning_headers(texts: Sequence[str]) -> list[tuple[str, str]]:
    """``Warning: 299 - "text"`` headers, at most 4096 bytes of them as the spec demands (the
    operator's ``warnings`` get what a response's own leave of that budget)."""
    values = ['299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"' for text in texts]
    return _within_budget([("warning", value) for value in values], _MAX_WARNING_BYTES)


def _within_budget(headers: list[tuple[str, str]], budget: int) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    for header in headers:
        budget -= len(header[1])
        if budget < 0:
            break
        kept.append(header)
    return kept


def create_app(
    settings: Settings | None = None,
    *,
    blobs: BlobStore | None = None,
    metadata: MetadataStore | None = None,
    authorize: Authorizer | None = None,
    event_hooks: Sequence[EventHook] = (),
) -> Registry:
    """The registry as an ASGI application, on the stores given, else on those the settings
    name (``storage``, ``metadata``: files and SQLite under ``root`` by default).

    Without ``authorize`` access control follows the settings (``htpasswd``, ``policy``,
    ``token_*``, ``rate_limit_*``; open when none is set); its two halves stay replaceable as
    ``app.access.authenticate`` and ``app.access.permits``."""
    return Registry(settings, blobs=blobs, metadata=metadata, authorize=authorize, event_hooks=event_hooks)
