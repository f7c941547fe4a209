"""Blob upload endpoints: monolithic, POST-then-PUT, streamed and chunked uploads,
cross-repository mounts, upload status and cancellation.

Chunks must arrive in order: a chunk that does not start where the upload ends is answered
416 with the upload's current ``Range``, and the session survives it so the client can
resume. A chunk whose length disagrees with its ``Content-Range`` is undone.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ..spec.digest import SUPPORTED_ALGORITHMS, Digest, VerificationError
from ..spec.reference import is_valid_repository
from .errors import RegistryError
from .hooks import Event
from .http import Request, Response
from .storage.base import UploadOffsetError

if TYPE_CHECKING:
    from .app import Registry

__all__ = ["cancel", "finish", "patch", "start", "status"]


def _range_value(size: int) -> str:
    # An empty upload is reported as 0-0, as distribution does and clients expect.
    return f"0-{max(size - 1, 0)}"


def _upload_headers(reg: Registry, name: str, upload_id: str, size: int) -> list[tuple[str, str]]:
    headers = [
        ("location", f"/v2/{name}/blobs/uploads/{upload_id}"),
        ("range", _range_value(size)),
        ("docker-upload-uuid", upload_id),
    ]
    if reg.settings.chunk_min_length:
        headers.append(("oci-chunk-min-length", str(reg.settings.chunk_min_length)))
    return headers


def _require_supported(reg: Registry, text: str) -> Digest:
    digest = reg.parse_digest(text)
    if digest.algorithm not in SUPPORTED_ALGORITHMS:
        raise RegistryError("DIGEST_INVALID", f"digest algorithm {digest.algorithm} is not supported")
    return digest


def _parse_content_range(value: str) -> tuple[int, int]:
    """``start-end`` (inclusive), with or without a ``bytes`` unit and a ``/total``."""
    text = value.strip()
    for prefix in ("bytes=", "bytes "):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    text = text.partition("/")[0]
    first, dash, last = text.partition("-")
    if not dash or not first.isdigit() or not last.isdigit() or int(last) < int(first):
        raise RegistryError("BLOB_UPLOAD_INVALID", f"invalid Content-Range {value!r}; expected start-end")
    return int(first), int(last)


async def _session_size(reg: Registry, name: str, upload_id: str) -> int:
    record = await reg.metadata.upload(upload_id)
    size = await reg.blobs.upload_size(upload_id) if record is not None else None
    if record is None or record.repository != name or size is None:
        raise RegistryError("BLOB_UPLOAD_UNKNOWN", f"no upload {upload_id} in {name}")
    return size


async def _append(reg: Registry, request: Request, name: str, upload_id: str, size: int) -> int:
    """Append the request body, enforcing the chunk order; the upload's new size."""
    declared = request.headers.get("content-range")
    span = _parse_content_range(declared) if declared else None
    if span is not None and span[0] != size:
        raise _out_of_order(reg, name, upload_id, size)
    try:
        new_size = await reg.blobs.upload_append(upload_id, size, request.stream())
    except UploadOffsetError as exc:  # another request appended meanwhile
        raise _out_of_order(reg, name, upload_id, exc.expected) from None
    if span is not None and new_size - size != span[1] - span[0] + 1:
        await reg.blobs.upload_truncate(upload_id, size)
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"the chunk has {new_size - size} bytes but Content-Range {declared!r} "
            f"says {span[1] - span[0] + 1}",
        )
    length = request.content_length
    if span is None and length is not None and new_size - size != length:
        await reg.blobs.upload_truncate(upload_id, size)
        raise RegistryError("SIZE_INVALID", f"received {new_size - size} bytes, Content-Length says {length}")
    return new_size


def _out_of_order(reg: Registry, name: str, upload_id: str, size: int) -> RegistryError:
    return RegistryError(
        "BLOB_UPLOAD_INVALID",
        f"chunks must be sent in order: the next chunk starts at byte {size}",
        status=416,
        headers=_upload_headers(reg, name, upload_id, size),
    )


async def _commit(reg: Registry, name: str, upload_id: str, digest: Digest) -> Response:
    async with reg.blobs.publishing():
        try:
            size = await reg.blobs.upload_commit(upload_id, digest)
        except VerificationError as exc:
            await reg.metadata.upload_delete(upload_id)
            raise RegistryError("DIGEST_INVALID", str(exc), detail={"digest": digest}) from None
        await reg.metadata.link_blob(name, digest, size)
    await reg.metadata.upload_delete(upload_id)
    await reg.emit(Event("push", name, "blob", digest=digest, size=size))
    return Response(
        status=201,
        headers=[("location", f"/v2/{name}/blobs/{digest}"), ("docker-content-digest", digest)],
    )


async def _mount(reg: Registry, request: Request, name: str, digest: Digest) -> Response | None:
    """Link a blob from another repository; None when it cannot (the caller starts an upload)."""
    source = request.param("from")
    if source is not None and not is_valid_repository(source):
        raise RegistryError("NAME_INVALID", f"invalid repository name {source!r} in ?from=")
    candidates = [source] if source else await reg.metadata.blob_repositories(digest)
    for repository in candidates:
        size = await reg.metadata.linked_blob_size(repository, digest)
        if size is None or await reg.blobs.size(digest) is None:
            continue
        try:
            await reg.authorize(request, repository, "pull")
        except RegistryError:
            continue  # a source the caller may not read is no source
        async with reg.blobs.publishing():
            await reg.metadata.link_blob(name, digest, size)
        await reg.emit(Event("mount", name, "blob", digest=digest, size=size))
        return Response(
            status=201,
            headers=[("location", f"/v2/{name}/blobs/{digest}"), ("docker-content-digest", digest)],
        )
    return None


async def start(reg: Registry, request: Request, name: str, _: str) -> Response:
    await reg.authorize(request, name, "push")
    mount = request.param("mount")
    if mount is not None:
        mounted = await _mount(reg, request, name, reg.parse_digest(mount))
        if mounted is not None:
            return mounted
    monolithic = request.param("digest")
    digest = _require_supported(reg, monolithic) if monolithic is not None else None
    upload_id = uuid.uuid4().hex
    await reg.blobs.upload_create(upload_id)
    await reg.metadata.upload_create(upload_id, name)
    if digest is None:
        return Response(status=202, headers=_upload_headers(reg, name, upload_id, 0))
    try:
        await _append(reg, request, name, upload_id, 0)
    except BaseException:
        await reg.blobs.upload_abort(upload_id)
        await reg.metadata.upload_delete(upload_id)
        raise
    return await _commit(reg, name, upload_id, digest)


async def status(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    size = await _session_size(reg, name, upload_id)
    return Response(status=204, headers=_upload_headers(reg, name, upload_id, size))


async def patch(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    size = await _session_size(reg, name, upload_id)
    new_size = await _append(reg, request, name, upload_id, size)
    await reg.metadata.upload_touch(upload_id)
    return Response(status=202, headers=_upload_headers(reg, name, upload_id, new_size))


async def finish(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    size = await _session_size(reg, name, upload_id)
    text = request.param("digest")
    if text is None:
        raise RegistryError("DIGEST_INVALID", "the closing PUT needs ?digest=<digest of the whole blob>")
    digest = _require_supported(reg, text)
    await _append(reg, request, name, upload_id, size)
    return await _commit(reg, name, upload_id, digest)


async def cancel(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    await _session_size(reg, name, upload_id)
    await reg.blobs.upload_abort(upload_id)
    await reg.metadata.upload_delete(upload_id)
    return Response(status=204)
