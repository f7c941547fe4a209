"""Blob endpoints: ``GET``/``HEAD``/``DELETE /v2/<name>/blobs/<digest>``, with Range support."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from ..spec.numbers import decimal
from .errors import RegistryError, still_referenced
from .hooks import Event
from .http import Request, Response

if TYPE_CHECKING:
    from ..spec.digest import Digest
    from .app import Registry

__all__ = ["delete", "get", "parse_range"]

#: Seconds a redirect to the object store stays valid: enough to start a large download.
_REDIRECT_EXPIRY: Final = 20 * 60


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for (RFC 9110 section 14).

    None means "ignore the header and send everything" (not bytes, several ranges, bad syntax);
    an unsatisfiable range raises ValueError.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    start, end = decimal(first), decimal(last)
    if not dash or (first and start is None) or (last and end is None) or (start is None and end is None):
        return None
    if start is None:  # a suffix: the last N bytes
        if not end or size == 0:
            raise ValueError("empty suffix range")
        return max(0, size - end), size - 1
    if start >= size or (end is not None and end < start):
        raise ValueError("range not satisfiable")
    return start, size - 1 if end is None else min(end, size - 1)


async def get(reg: Registry, request: Request, name: str, reference: str) -> Response:
    await reg.authorize(request, name, "pull")
    digest = reg.parse_digest(reference)
    if reg.settings.blob_redirect and request.method == "GET":
        size = await _linked(reg, name, digest)
        url = await reg.blobs.url(digest, expires=_REDIRECT_EXPIRY)
        if url is not None:  # the object store serves the bytes (and the Range) itself
            return Response(status=307, headers=[("location", url), ("docker-content-digest", digest)])
        await _stored(reg, name, digest)
    else:
        size = await _linked_and_stored(reg, name, digest)
    headers = [
        ("content-type", "application/octet-stream"),
        ("docker-content-digest", digest),
        ("etag", f'"{digest}"'),
        ("accept-ranges", "bytes"),
        ("cache-control", "max-age=31536000, immutable"),
    ]
    wanted = request.headers.get("range")
    if wanted and request.method == "GET":
        try:
            span = parse_range(wanted, size)
        except ValueError:  # an answer about this request, not the blob: nothing a cache may keep
            unsatisfiable = [("content-range", f"bytes */{size}"), ("content-length", "0")]
            return Response(status=416, headers=unsatisfiable)
        if span is not None:
            start, end = span
            length = end - start + 1
            headers += [("content-range", f"bytes {start}-{end}/{size}"), ("content-length", str(length))]
            return Response(status=206, headers=headers, chunks=reg.blobs.read(digest, start, length))
    headers.append(("content-length", str(size)))
    # Streamed from the event loop in 1 MiB reads: measured ~35% faster than handing the path
    # to Granian 2.8 (http.response.pathsend), which reads in 128 KiB pieces (docs/benchmarks.md).
    return Response(headers=headers, chunks=reg.blobs.read(digest))


async def _linked(reg: Registry, name: str, digest: Digest) -> int:
    """The blob's size when ``name`` links it, asking the metadata store alone.

    A redirect is answered from the registry's record, without asking the object store first:
    the store answers for its own bytes when the client follows the URL (a lost object is its
    404, an unreachable store its connection error). The replica's view of the store is not
    the client's anyway, as the URL may reach the store by another route, and asking would
    cost every pull a store round trip (tens of milliseconds and a billed request on AWS).
    """
    size = await reg.metadata.linked_blob_size(name, digest)
    if size is None:
        raise _unknown(name, digest)
    return size


async def _stored(reg: Registry, name: str, digest: Digest) -> None:
    if await reg.blobs.stat(digest) is None:
        raise _unknown(name, digest)


def _unknown(name: str, digest: Digest) -> RegistryError:
    return RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in {name}", detail={"digest": digest})


async def _linked_and_stored(reg: Registry, name: str, digest: Digest) -> int:
    """The blob's size when ``name`` links it and the blob store holds it.

    A HEAD is the store's word to a pusher that it may skip the upload, so it asks the store:
    a blob lost behind the registry's back is BLOB_UNKNOWN (and pushed again), and an
    unreachable store is 503. Both stores are asked at once, so that a request waits for one
    round trip, not two (on S3 and PostgreSQL each is a network request).
    """
    linked, stored = await asyncio.gather(
        reg.metadata.linked_blob_size(name, digest), reg.blobs.stat(digest), return_exceptions=True
    )
    if isinstance(linked, BaseException):
        raise linked
    if linked is not None and isinstance(stored, BaseException):
        raise stored
    if linked is None or stored is None:
        raise _unknown(name, digest)
    return linked


async def delete(reg: Registry, request: Request, name: str, reference: str) -> Response:
    await reg.authorize(request, name, "delete")
    if not reg.settings.delete_blobs:
        raise RegistryError("UNSUPPORTED", "blob deletion is disabled on this registry")
    digest = reg.parse_digest(reference)
    outcome = await reg.metadata.unlink_blob(name, digest, refuse_if_used=not reg.settings.delete_referenced)
    if outcome.referenced_by:
        raise still_referenced(f"blob {digest}", "used by", name, outcome.referenced_by)
    if not outcome.deleted:
        raise _unknown(name, digest)
    await reg.emit(Event("delete", name, "blob", digest=digest))
    return Response(status=202)
