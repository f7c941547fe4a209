"""Blob upload endpoints: monolithic, POST-then-PUT, streamed and chunked uploads,
cross-repository mounts, upload status and cancellation.

Every request of one upload may reach a different replica, so the session lives in the
metadata store: its size, the SHA-256 state of the bytes so far, and the blob store's staging
state. A request that writes (PATCH, the closing PUT) first claims the session's lease, so
that two writers never interleave; a lease whose holder died expires after
:data:`UPLOAD_LEASE_TTL` seconds, and a claim waits that long at most.

Chunks must arrive in order: a chunk that does not start where the upload ends is answered
416 with the upload's current ``Range``, and the session survives it so the client can
resume. A chunk whose length disagrees with its ``Content-Range`` does not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..spec.digest import SUPPORTED_ALGORITHMS, Digest, HashStateError, ResumableDigester
from ..spec.numbers import decimal
from ..spec.reference import is_valid_repository
from .errors import RegistryError
from .hooks import Event
from .http import ClientDisconnected, Request, Response
from .storage.base import StorageUnavailable, UploadRecord

if TYPE_CHECKING:
    from .app import Registry

__all__ = ["UPLOAD_LEASE_TTL", "cancel", "finish", "patch", "start", "status"]

#: How long a writer holds a session without renewing; a replica killed mid-PATCH blocks its
#: upload this long at most.
UPLOAD_LEASE_TTL: Final = 10.0
#: How long a blob being garbage-collected may hold up the publication of the same digest.
_PUBLISH_WAIT: Final = 30.0
_POLL: Final = 0.05
#: Bytes of body hashed at once in a thread: the batch being hashed and the one being received
#: are held in memory until hashed, on top of what the staging holds.
_HASH_BATCH: Final = 1 << 20
#: Seconds a client refused for too many open uploads is asked to wait before trying again.
_RETRY_AFTER: Final = 30
# Hashing runs beside the receiving and the writing; OpenSSL releases the GIL.
_hashing = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ocikit-hash")


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
    start, end = decimal(first), decimal(last)
    if not dash or start is None or end is None or end < start:
        raise RegistryError("BLOB_UPLOAD_INVALID", f"invalid Content-Range {value!r}; expected start-end")
    return start, end


def _unknown_upload(name: str, upload_id: str) -> RegistryError:
    return RegistryError("BLOB_UPLOAD_UNKNOWN", f"no upload {upload_id} in {name}")


async def _session(reg: Registry, name: str, upload_id: str) -> UploadRecord:
    record = await reg.metadata.upload(upload_id)
    if record is None or record.repository != name:
        raise _unknown_upload(name, upload_id)
    return record


class _Writer:
    """One request's hold on an upload session: the lease, renewed in the background for as
    long as the request works on the session.

    Security decision: renewals do not wait for body bytes. A body stalled between chunks,
    or an object store slow to take a part, or a long commit, would otherwise let the lease
    lapse while this request still writes, and a second request could write the same
    staging area at the same time. A writer whose session moved on without it (another
    request advanced it after a lapse) stops at its next chunk and never advances it."""

    def __init__(self, reg: Registry, name: str, upload_id: str) -> None:
        self.reg, self.name, self.upload_id = reg, name, upload_id
        self.holder = uuid.uuid4().hex
        self._claimed: tuple[int, bytes] = (0, b"")
        self._lost = False
        self._stopping = asyncio.Event()
        self._holding: asyncio.Task[None] | None = None

    async def claim(self) -> UploadRecord:
        """The session, once this request holds its lease (waiting out another writer's)."""
        await _session(self.reg, self.name, self.upload_id)
        deadline = time.monotonic() + UPLOAD_LEASE_TTL + 1
        while True:
            record = await self.reg.metadata.upload_claim(self.upload_id, self.holder, UPLOAD_LEASE_TTL)
            if record is not None:
                self._claimed = (record.size, record.stage)
                self._holding = asyncio.create_task(self._hold())
                return record
            if await self.reg.metadata.upload(self.upload_id) is None:
                raise _unknown_upload(self.name, self.upload_id)
            if time.monotonic() > deadline:
                raise RegistryError(
                    "BLOB_UPLOAD_INVALID", "another request is writing to this upload", status=409
                )
            await asyncio.sleep(_POLL)

    async def _hold(self) -> None:
        while not await _set_within(self._stopping, UPLOAD_LEASE_TTL / 3):
            try:
                record = await self.reg.metadata.upload_claim(self.upload_id, self.holder, UPLOAD_LEASE_TTL)
            except StorageUnavailable:
                record = None
            if record is None or (record.size, record.stage) != self._claimed:
                self._lost = True
                return

    def check(self) -> None:
        """Stop a stream whose lease was lost."""
        if self._lost:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID", "the upload was taken over by another request", status=409
            )

    async def stop(self) -> None:
        """Stop renewing (before the session is advanced or deleted): a renewal after that
        would take the lease again for nobody."""
        self._stopping.set()
        if self._holding is not None:
            await self._holding

    async def release(self) -> None:
        with contextlib.suppress(Exception):  # the lease expires anyway
            await self.stop()
            await self.reg.metadata.upload_release(self.upload_id, self.holder)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


def _carried_digester(record: UploadRecord) -> ResumableDigester | None:
    if not record.hash_state:
        return None
    try:
        digester = ResumableDigester.restore(record.hash_state)
    except HashStateError:
        return None
    return digester if digester.size == record.size else None


class _Intake:
    """A request body on its way to the staging area, hashed as it passes (in a worker thread,
    batch after batch, while the next batch is received), stopping if the lease was lost.

    A client that disconnects mid-body ends the stream early rather than failing it: the bytes
    that arrived are kept, as distribution keeps them, and the client resumes from the offset
    the registry then reports.
    """

    def __init__(
        self, request: Request, writer: _Writer, digester: ResumableDigester | None, *, keep_partial: bool
    ) -> None:
        self.request, self.writer, self.digester = request, writer, digester
        self.keep_partial = keep_partial
        self.disconnected = False

    def _update(self, pieces: list[bytes]) -> None:
        assert self.digester is not None
        for piece in pieces:
            self.digester.update(piece)

    async def stream(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        batch: list[bytes] = []
        batched = 0
        try:
            async for chunk in self._received():
                self.writer.check()
                if self.digester is not None:
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= _HASH_BATCH:
                        if pending is not None:
                            await pending
                        pending = loop.run_in_executor(_hashing, self._update, batch)
                        batch, batched = [], 0
                yield chunk
            if pending is not None:
                await pending
                pending = None
            if batch:
                await loop.run_in_executor(_hashing, self._update, batch)
        finally:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await pending

    async def _received(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.stream():
                yield chunk
        except ClientDisconnected:
            if not self.keep_partial:
                raise
            self.disconnected = True


@dataclass(frozen=True, slots=True)
class _Appended:
    size: int
    digester: ResumableDigester | None
    stage: bytes
    disconnected: bool
    #: Written straight to the blob's place: committed or discarded by this request, never
    #: left for a retry (no later request could find it to clean it up).
    direct: bool = False


async def _discard_direct(reg: Registry, upload_id: str, appended: _Appended) -> None:
    if appended.direct:
        with contextlib.suppress(Exception):  # already committed, or gone with its store
            await reg.blobs.stage_abort(upload_id, appended.stage)


async def _append(
    reg: Registry, request: Request, writer: _Writer, record: UploadRecord, closing: Digest | None = None
) -> _Appended:
    """Stage the request body after the session's bytes. ``closing`` is the digest of the
    blob when this body ends the upload."""
    declared = request.headers.get("content-range")
    span = _parse_content_range(declared) if declared else None
    if span is not None and span[0] != record.size:
        raise _out_of_order(reg, writer.name, record)
    digester = _carried_digester(record)
    # A whole blob in one request, hashed on the way: the store may write it straight to its
    # place (invisibly until committed). Such a body is all or nothing: cut short, it is not
    # kept for a resumption, since its bytes cannot be read back from there.
    destination = None
    if closing is not None and record.size == 0 and digester is not None:
        destination = closing if digester.algorithm == closing.algorithm else None
    intake = _Intake(request, writer, digester, keep_partial=destination is None)
    try:
        written, stage = await reg.blobs.stage_append(
            record.id, record.stage, record.size, intake.stream(), destination
        )
    except FileNotFoundError:
        await reg.metadata.upload_delete(record.id)  # its staging area is gone: so is the upload
        raise _unknown_upload(writer.name, record.id) from None
    appended = _Appended(
        record.size + written, intake.digester, stage, intake.disconnected, direct=destination is not None
    )
    if appended.disconnected:
        return appended
    mismatch = _length_mismatch(request, declared, span, written)
    if mismatch is not None:
        await _discard_direct(reg, record.id, appended)
        raise mismatch
    return appended


def _length_mismatch(
    request: Request, declared: str | None, span: tuple[int, int] | None, written: int
) -> RegistryError | None:
    """The error when the body's length is not what its Content-Range (or else its
    Content-Length) said."""
    if span is not None:
        promised = span[1] - span[0] + 1
        if written == promised:
            return None
        message = f"the chunk has {written} bytes but Content-Range {declared!r} says {promised}"
        return RegistryError("BLOB_UPLOAD_INVALID", message)
    length = request.content_length
    if length is None or written == length:
        return None
    return RegistryError("SIZE_INVALID", f"received {written} bytes, Content-Length says {length}")


async def _advance(reg: Registry, writer: _Writer, appended: _Appended) -> None:
    """Make the appended bytes part of the upload, releasing the lease."""
    await writer.stop()
    writer.check()
    hash_state = appended.digester.export() if appended.digester is not None else b""
    advanced = await reg.metadata.upload_advance(
        writer.upload_id, writer.holder, size=appended.size, hash_state=hash_state, stage=appended.stage
    )
    if not advanced:
        raise RegistryError("BLOB_UPLOAD_INVALID", "the upload was taken over by another request", status=409)
    if appended.disconnected:
        raise ClientDisconnected


def _out_of_order(reg: Registry, name: str, record: UploadRecord) -> RegistryError:
    return RegistryError(
        "BLOB_UPLOAD_INVALID",
        f"chunks must be sent in order: the next chunk starts at byte {record.size}",
        status=416,
        headers=_upload_headers(reg, name, record.id, record.size),
    )


async def _verify(reg: Registry, record: UploadRecord, appended: _Appended, digest: Digest) -> None:
    """Check the staged bytes against ``digest``: from the carried state when it is of the
    same algorithm, else by reading them back."""
    actual: Digest | None
    if appended.digester is not None and appended.digester.algorithm == digest.algorithm:
        actual = appended.digester.digest()
    else:
        fresh = digest.digester()
        async for chunk in reg.blobs.stage_read(record.id, appended.stage, appended.size):
            await asyncio.to_thread(fresh.update, chunk)
        actual = fresh.digest() if fresh.size == appended.size else None
    if actual != digest:
        await reg.blobs.stage_abort(record.id, appended.stage)
        await reg.metadata.upload_delete(record.id)
        raise RegistryError(
            "DIGEST_INVALID",
            f"the uploaded content has digest {actual}, not {digest}",
            detail={"digest": digest},
        )


async def _announce(reg: Registry, digest: Digest, holder: str) -> None:
    """Announce the publication of ``digest`` to garbage collection, waiting while a
    collection is deleting the same digest's bytes."""
    deadline = time.monotonic() + _PUBLISH_WAIT
    while not await reg.metadata.publish_begin(digest, holder, _PUBLISH_WAIT * 2):
        if time.monotonic() > deadline:
            raise RegistryError("UNAVAILABLE", f"blob {digest} is being garbage-collected; try again")
        await asyncio.sleep(_POLL)


async def _commit(
    reg: Registry, writer: _Writer, record: UploadRecord, appended: _Appended, digest: Digest
) -> Response:
    name, holder, size = writer.name, uuid.uuid4().hex, appended.size
    await _announce(reg, digest, holder)
    try:
        await reg.blobs.stage_commit(record.id, appended.stage, size, digest)
        linked = await reg.metadata.link_blob(name, digest, size, announced_by=holder)
    finally:
        await reg.metadata.publish_end(digest, holder)
    await writer.stop()
    await reg.metadata.upload_delete(record.id)
    if not linked:
        raise _collected_meanwhile(digest)
    await reg.emit(Event("push", name, "blob", digest=digest, size=size))
    return Response(
        status=201,
        headers=[("location", f"/v2/{name}/blobs/{digest}"), ("docker-content-digest", digest)],
    )


def _collected_meanwhile(digest: Digest) -> RegistryError:
    """The push stalled past its announcement and a collection swept the digest meanwhile:
    the bytes just published may be deleted, so the blob is not linked (see
    ``MetadataStore.link_blob``). The upload is spent; the client pushes the blob again."""
    return RegistryError(
        "UNAVAILABLE",
        f"blob {digest} was garbage-collected while this upload published it; push it again",
    )


async def _mount(reg: Registry, request: Request, name: str, digest: Digest) -> Response | None:
    """Link a blob from another repository; None when it cannot (the caller starts an upload)."""
    source = request.param("from")
    if source is not None and not is_valid_repository(source):
        raise RegistryError("NAME_INVALID", f"invalid repository name {source!r} in ?from=")
    candidates = [source] if source else await reg.metadata.blob_repositories(digest)
    for repository in candidates:
        size = await reg.metadata.linked_blob_size(repository, digest)
        if size is None:
            continue
        if not await reg.may(request, repository, "pull"):
            continue  # a source the caller may not read is no source
        holder = uuid.uuid4().hex
        if not await reg.metadata.publish_begin(digest, holder, _PUBLISH_WAIT):
            return None  # being deleted: the client uploads it again
        try:
            if await reg.blobs.stat(digest) is None:
                continue
            if not await reg.metadata.link_blob(name, digest, size, announced_by=holder):
                return None  # collected meanwhile: the client uploads it again
        finally:
            await reg.metadata.publish_end(digest, holder)
        await reg.emit(Event("mount", name, "blob", digest=digest, size=size))
        return Response(
            status=201,
            headers=[("location", f"/v2/{name}/blobs/{digest}"), ("docker-content-digest", digest)],
        )
    return None


def _upload_algorithm(request: Request, closing: Digest | None) -> str:
    """The algorithm a new upload is hashed with as its bytes arrive: that of the digest the
    POST closes it with, else ``?digest-algorithm=`` (end-4c), else SHA-256. An algorithm
    the registry cannot store is refused now, not after the client has sent every byte."""
    requested = request.param("digest-algorithm")
    if requested is not None and requested not in SUPPORTED_ALGORITHMS:
        supported = ", ".join(sorted(SUPPORTED_ALGORITHMS))
        raise RegistryError(
            "DIGEST_INVALID", f"digest algorithm {requested!r} is not supported; use {supported}"
        )
    if closing is not None and requested not in (None, closing.algorithm):
        raise RegistryError("DIGEST_INVALID", f"digest-algorithm={requested} conflicts with digest={closing}")
    return closing.algorithm if closing is not None else requested or "sha256"


async def _create_session(reg: Registry, request: Request, name: str, algorithm: str) -> UploadRecord:
    upload_id = uuid.uuid4().hex
    stage = await reg.blobs.stage_create(upload_id)
    now = time.time()
    digester = ResumableDigester(algorithm) if ResumableDigester.supported(algorithm) else None
    record = UploadRecord(
        id=upload_id,
        repository=name,
        client=request.client_key,
        size=0,
        hash_state=digester.export() if digester is not None else b"",
        stage=stage,
        created_at=now,
        updated_at=now,
    )
    settings = reg.settings
    try:
        created = await reg.metadata.upload_create(
            record, per_repository=settings.repository_upload_limit, per_client=settings.client_upload_limit
        )
    except BaseException:
        await reg.blobs.stage_abort(upload_id, stage)
        raise
    if not created:
        await reg.blobs.stage_abort(upload_id, stage)
        raise _too_many_uploads(reg, name)
    return record


def _too_many_uploads(reg: Registry, name: str) -> RegistryError:
    """Open sessions are capped per repository and per client address, so that nobody can
    pile up sessions (each holds staging space until it expires). A place frees up when a
    session finishes or is cancelled, at the latest when an abandoned one expires."""
    settings = reg.settings
    caps = [
        f"{settings.repository_upload_limit} in {name}" if settings.repository_upload_limit else "",
        f"{settings.client_upload_limit} from one address" if settings.client_upload_limit else "",
    ]
    return RegistryError(
        "TOOMANYREQUESTS",
        f"too many open uploads (at most {' and '.join(filter(None, caps))}): finish or cancel "
        f"some, or wait for abandoned ones to expire {settings.upload_expiry:g} s after their last chunk",
        headers=[("retry-after", str(_RETRY_AFTER))],
    )


async def start(reg: Registry, request: Request, name: str, _: str) -> Response:
    await reg.authorize(request, name, "push")
    mount = request.param("mount")
    if mount is not None:
        mounted = await _mount(reg, request, name, reg.parse_digest(mount))
        if mounted is not None:
            return mounted
    monolithic = request.param("digest")
    digest = _require_supported(reg, monolithic) if monolithic is not None else None
    record = await _create_session(reg, request, name, _upload_algorithm(request, digest))
    if digest is None:
        return Response(status=202, headers=_upload_headers(reg, name, record.id, 0))
    try:
        return await _finish(reg, request, _Writer(reg, name, record.id), digest)
    except BaseException:
        with contextlib.suppress(Exception):
            await reg.blobs.stage_abort(record.id, record.stage)
            await reg.metadata.upload_delete(record.id)
        raise


async def status(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    record = await _session(reg, name, upload_id)
    return Response(status=204, headers=_upload_headers(reg, name, upload_id, record.size))


async def patch(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    writer = _Writer(reg, name, upload_id)
    record = await writer.claim()
    try:
        appended = await _append(reg, request, writer, record)
    except BaseException:
        await writer.release()
        raise
    await _advance(reg, writer, appended)
    return Response(status=202, headers=_upload_headers(reg, name, upload_id, appended.size))


async def finish(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    await _session(reg, name, upload_id)
    text = request.param("digest")
    if text is None:
        raise RegistryError("DIGEST_INVALID", "the closing PUT needs ?digest=<digest of the whole blob>")
    return await _finish(reg, request, _Writer(reg, name, upload_id), _require_supported(reg, text))


async def _finish(reg: Registry, request: Request, writer: _Writer, digest: Digest) -> Response:
    record = await writer.claim()
    appended: _Appended | None = None
    try:
        appended = await _append(reg, request, writer, record, closing=digest)
        if appended.disconnected:
            await _advance(reg, writer, appended)
        await _verify(reg, record, appended, digest)
        return await _commit(reg, writer, record, appended, digest)
    except BaseException:
        if appended is not None:
            await _discard_direct(reg, record.id, appended)
        await writer.release()  # a session that failed stays as it was for a retry
        raise


async def cancel(reg: Registry, request: Request, name: str, upload_id: str) -> Response:
    await reg.authorize(request, name, "push")
    record = await _session(reg, name, upload_id)
    await reg.blobs.stage_abort(upload_id, record.stage)
    await reg.metadata.upload_delete(upload_id)
    return Response(status=204)
