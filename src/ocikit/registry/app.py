"""The registry as an ASGI application: routing, lifecycle, logging and the shared helpers
that handlers use. Handlers (``blobs``, ``uploads``, ``manifests``, ``discovery``) only
translate HTTP into storage calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec

from ..spec.digest import Digest, DigestError
from ..spec.reference import is_valid_repository
from . import maintenance
from .errors import RegistryError
from .hooks import Action, Authorizer, Event, EventHook, allow_all
from .http import ClientDisconnected, Receive, Request, Response, Scope, Send
from .settings import Settings
from .storage import blob_store_for, metadata_store_for
from .storage.base import BlobStore, MetadataStore, StorageUnavailable

__all__ = ["Registry", "create_app"]

log = logging.getLogger("ocikit.registry")
access_log = logging.getLogger("ocikit.registry.access")

Handler = Callable[["Registry", Request, str, str], Awaitable[Response]]

_API_VERSION: Final = ("docker-distribution-api-version", "registry/2.0")
_MAX_WARNING_BYTES: Final = 4096

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
        authorize: Authorizer = allow_all,
        event_hooks: Sequence[EventHook] = (),
    ) -> None:
        self.settings = settings or Settings()
        self.blobs: BlobStore = blobs if blobs is not None else blob_store_for(self.settings)
        self.metadata: MetadataStore = metadata if metadata is not None else metadata_store_for(self.settings)
        self.authorize_hook = authorize
        self.event_hooks = list(event_hooks)
        self._handlers = _handlers()
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._background: list[asyncio.Task[None]] = []
        self._static_warnings = _warning_headers(self.settings.warnings)

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

    async def __aenter__(self) -> Registry:
        await self.startup()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.shutdown()

    # ---------------------------------------------------------- shared helpers

    async def authorize(self, request: Request, repository: str | None, action: Action) -> None:
        await self.authorize_hook(request, repository, action)

    async def emit(self, event: Event) -> None:
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
        started = time.perf_counter()
        request = Request(scope, receive)
        response = await self._respond(request)
        response.headers.append(_API_VERSION)
        response.headers.extend(self._static_warnings)
        sent = await response.send(send, head=request.method == "HEAD")
        if self.settings.access_log:
            self._log(request, response, sent, time.perf_counter() - started)

    async def _respond(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except RegistryError as error:
            response = Response(
                status=error.status,
                headers=[("content-type", "application/json"), *error.headers],
                body=error.body(),
            )
        except ClientDisconnected:
            return Response(status=400)
        except StorageUnavailable as exc:
            log.warning("%s %s: %s", request.method, request.path, exc)
            unavailable = RegistryError("UNAVAILABLE", str(exc))
            response = Response(
                status=503,
                headers=[("content-type", "application/json"), ("retry-after", "1")],
                body=unavailable.body(),
            )
        except Exception:
            log.exception("unhandled error for %s %s", request.method, request.path)
            internal = RegistryError("UNSUPPORTED", "internal error", status=500)
            response = Response(
                status=500, headers=[("content-type", "application/json")], body=internal.body()
            )
        with contextlib.suppress(ClientDisconnected):
            await request.drain()
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

    def _log(self, request: Request, response: Response, sent: int, duration: float) -> None:
        if self.settings.log_format == "json":
            access_log.info(
                msgspec.json.encode(
                    {  # plain values only
                        "time": time.time(),
                        "method": request.method,
                        "path": request.path,
                        "status": response.status,
                        "bytes": sent,
                        "duration_ms": round(duration * 1000, 3),
                    }
                ).decode()
            )
        else:
            access_log.info(
                "%s %s %d %d %.1fms", request.method, request.path, response.status, sent, duration * 1000
            )


def _warning_headers(texts: Sequence[str]) -> list[tuple[str, str]]:
    """``Warning: 299 - "text"`` headers, at most 4096 bytes of them as the spec demands."""
    headers, total = [], 0
    for text in texts:
        value = '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        total += len(value)
        if total > _MAX_WARNING_BYTES:
            break
        headers.append(("warning", value))
    return headers


def create_app(
    settings: Settings | None = None,
    *,
    blobs: BlobStore | None = None,
    metadata: MetadataStore | None = None,
    authorize: Authorizer = allow_all,
    event_hooks: Sequence[EventHook] = (),
) -> Registry:
    """The registry as an ASGI application, on the stores given, else on those the settings
    name (``storage``, ``metadata``: files and SQLite under ``root`` by default)."""
    return Registry(settings, blobs=blobs, metadata=metadata, authorize=authorize, event_hooks=event_hooks)
