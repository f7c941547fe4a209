"""Blobs in an S3-compatible object store: ``PREFIX/blobs/<alg>/<encoded>``.

Staging: an upload is a sequence of immutable staging objects under ``PREFIX/uploads/<id>/``,
each written once under a fresh random name and never overwritten. The ``stage`` value that
the metadata store keeps lists them in order, so only objects a recorded ``stage`` names are
part of the upload: a request that fails, or whose lease was taken over while it still wrote,
leaves objects nobody names (removed with the upload) and cannot change recorded bytes. An
empty ``created`` object marks the upload from its start, for :meth:`S3BlobStore.staged`.

- *runs* hold at least 5 MiB, the smallest part S3 accepts in a multipart upload but the
  last: a request long enough streams its body into a multipart upload of its own, in parts
  of :func:`_part_size` bytes (one being sent while the next fills, so memory stays constant
  whatever the blob's size), and completes it when the body ends, so a blob sent in one
  request (as skopeo and containerd send them) is one staging object; a request of one part
  is one PUT. A run cut off by a crash is an unfinished multipart upload under the prefix,
  aborted with the upload;
- *pieces* are what a request leaves when, with the pieces before it, it holds less than the
  smallest part: the next request reads them back and sends them at the head of its first
  part, so many small chunks (clients sending 1 MiB PATCHes) combine into valid parts. Pieces
  a later stage has absorbed into a run are deleted by the request after it, once that stage
  is surely recorded.

The commit copies the staged objects server-side into ``blobs/<alg>/<encoded>`` (one copy of a
single run, else one multipart upload of part copies) so the blob appears whole and at once,
then removes the staging objects. S3 has no rename: a content-addressed key needs the digest,
which is only known at the end — except for a whole blob in one request whose digest the
caller names: that one is written straight into a multipart upload at its key (a *direct*
stage) and committed by completing it. Integrity on the wire: SigV4 signs every payload sent
over plain HTTP, and TLS covers HTTPS, so no extra checksum is computed.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import re
import secrets
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, suppress
from email.utils import parsedate_to_datetime
from typing import Any, Final, NoReturn

import aiohttp
import botocore.exceptions  # type: ignore[import-untyped]
import msgspec
import yarl
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.handlers import add_expect_header  # type: ignore[import-untyped]
from botocore.loaders import JSONFileLoader, create_loader  # type: ignore[import-untyped]

from ...spec.digest import Digest, digest_error
from .base import BlobInfo, StorageUnavailable
from .recent import Recent

__all__ = ["S3BlobStore"]

COMPONENT: Final = "S3 object storage"
MiB: Final = 1 << 20
#: S3's smallest multipart part (all but the last).
_MIN_PART: Final = 5 * MiB
_MAX_PART: Final = 5 * 1024 * MiB
#: The parts of a long request (measured in docs/benchmarks.md).
_STREAM_PART: Final = 10 * MiB
_READ_CHUNK: Final = MiB
#: What the HTTP client is handed of a part at a time.
_SEND_SLICE: Final = 256 * 1024
_COPY_CONCURRENCY: Final = 8
#: Parts being sent while the next one fills (each held twice: its buffer and the HTTP client's
#: copy). More were not measurably faster against a local SeaweedFS.
_PARTS_IN_FLIGHT: Final = 1
_DELETE_BATCH: Final = 1000
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CONTENT_TYPE: Final = "application/octet-stream"
#: The empty object that makes an upload listed from its start (see ``staged``).
_CREATED: Final = "created"
_DOCUMENTATION: Final = frozenset({"documentation", "documentationUrl"})
_ACCESS_DENIED: Final = "access denied ({code}): check the credentials (AWS_ACCESS_KEY_ID, ~/.aws)"
#: S3 refuses with 403; these come from a forward proxy (407, or 401 from tinyproxy).
_PROXY_AUTH: Final = frozenset({401, 407})
_PRESIGNED_REFUSED: Final = "HTTP 400 to a presigned HEAD: is s3_region the bucket's region?"
_PROXY_REFUSED: Final = (
    "the proxy refused the request (HTTP {status}): check the user and password in HTTPS_PROXY or HTTP_PROXY"
)
#: Seconds for which one signed blob URL is handed out again, at most (and a twentieth of its
#: life): signing takes 150 us of CPU, the rest of a redirect 7 us. Each URL is signed for
#: that much longer than asked.
_URL_REUSE: Final = 60.0
_URLS_KEPT: Final = 4096
#: A HEAD's presigned URL is used at once: its life only has to cover clock skew.
_HEAD_EXPIRY: Final = 60
#: botocore's standard retry mode, which the store's other requests use.
_HEAD_ATTEMPTS: Final = 3


def _part_size(offset: int) -> int:
    """The size of the parts a request streams into at ``offset``: growing with the upload so
    that even a 5 TiB blob stays within S3's 10,000 parts. An upload holds two parts' worth in
    memory (one filling, one being sent: :class:`_PartBody`), and an object store takes larger
    parts faster (SeaweedFS: 50 MiB in 5 MiB parts 437 ms, in 10 MiB parts 346 ms)."""
    return min(_MAX_PART, max(_STREAM_PART, offset // 1000))


class _Stage(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """What a recorded upload consists of, in order: parts, then pieces."""

    version: int = 1
    #: (name, size) of staging objects of at least 5 MiB each (runs).
    parts: list[tuple[str, int]] = msgspec.field(default_factory=list)
    #: (name, size) of small staging objects following the parts.
    pieces: list[tuple[str, int]] = msgspec.field(default_factory=list)
    #: Objects this stage no longer names (pieces absorbed into a part): the next request
    #: deletes them, since by then this stage is the recorded one.
    stale: list[str] = msgspec.field(default_factory=list)
    #: A monolithic upload written straight to its blob's key: (key, multipart upload id,
    #: the parts' (ETag, size)); invisible until :meth:`S3BlobStore.stage_commit` completes it.
    direct: tuple[str, str, list[tuple[str, int]]] | None = None

    @property
    def size(self) -> int:
        if self.direct is not None:
            return sum(size for _, size in self.direct[2])
        return sum(size for _, size in self.parts) + sum(size for _, size in self.pieces)


_encode_stage = msgspec.msgpack.Encoder().encode
_stage_decoder = msgspec.msgpack.Decoder(_Stage)


def _decode_stage(stage: bytes) -> _Stage:
    try:
        return _stage_decoder.decode(stage)
    except msgspec.DecodeError as error:
        raise ValueError(f"not an S3 staging state: {error}") from error


class _Missing(FileNotFoundError):
    """The object or bucket does not exist (HTTP 404); reading an absent blob raises it."""


class _Transient(StorageUnavailable):
    """A failure worth another attempt: no connection, or the store's 5xx or 429."""


class S3BlobStore:
    """Blobs and staged uploads in one bucket of an S3-compatible object store.

    Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance roles). With an ``endpoint`` (MinIO,
    SeaweedFS, Ceph) requests use path-style addressing.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None, region: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.region = region
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._http: aiohttp.ClientSession | None = None
        self._proxy: dict[str, Any] = {}
        #: (key, expiry asked) → presigned GET URL.
        self._signed: Recent[tuple[str, float], str] = Recent(_URLS_KEPT)

    def __repr__(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix}{where})"

    # ---------------------------------------------------------------- connection

    async def open(self) -> None:
        config = AioConfig(
            # Presigned URLs too: botocore presigns them with SigV2 unless told, which AWS
            # buckets created since 2020, Cloudflare R2 and Backblaze B2 refuse.
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.endpoint else "auto"},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=64,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Every call's parameters are this store's own; botocore's check of them would
            # refuse a part's body passed as a memoryview, which saves a copy of every part.
            parameter_validation=False,
        )
        session = _session()
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3", endpoint_url=self.endpoint, region_name=self.region or None, config=config
            )
        )
        # botocore asks for "Expect: 100-continue" before every body, and the HTTP client then
        # holds the body back until the interim answer: a forward proxy that does not relay it
        # (tinyproxy) held every upload through it until the read timeout.
        self._client.meta.events.unregister("before-call.s3", add_expect_header)
        ca_bundle = session.get_config_variable("ca_bundle")
        self._http = await self._stack.enter_async_context(_plain_http(ca_bundle))
        probe = await self._presigned("head_object", self._key("blobs"), _HEAD_EXPIRY)
        self._proxy = _proxy_for(probe)
        try:
            # A GET, not HeadBucket (both need s3:ListBucket): a proxy's refusal comes with a
            # page, which in answer to a HEAD (tinyproxy) breaks the HTTP parser's reading of it.
            await self._call("list_objects_v2", Bucket=self.bucket, Prefix=self._key("blobs", ""), MaxKeys=1)
            # Presigned requests get no region redirect: a wrong region shows here, not at a pull.
            await self._head(probe)
        except _Missing:
            await self.close()
            raise StorageUnavailable(COMPONENT, f"bucket {self.bucket!r} does not exist") from None
        except StorageUnavailable:
            await self.close()
            raise

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
        self._http = None
        self._signed.clear()

    async def _call(self, operation: str, **params: Any) -> Any:
        """One S3 request; 404 raises :class:`_Missing`, every other failure
        :class:`StorageUnavailable` with a one-line reason (the registry answers 503)."""
        if self._client is None:
            raise StorageUnavailable(COMPONENT, "the store is not open")
        try:
            return await getattr(self._client, operation)(**params)
        except botocore.exceptions.ClientError as error:
            _raise_for_client_error(error, proxied=bool(self._proxy))
        except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as error:
            raise StorageUnavailable(COMPONENT, _one_line(error, self.endpoint)) from error

    # ---------------------------------------------------------------- keys

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts) if self.prefix else parts)

    def _blob_key(self, digest: Digest) -> str:
        return self._key("blobs", digest.algorithm, digest.encoded)

    def _upload_prefix(self, upload_id: str) -> str:
        # Security: the id becomes part of an object key; it must not reach another upload's
        # objects or the blobs (no "/", no "..").
        if _UPLOAD_ID.fullmatch(upload_id) is None:
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self._key("uploads", upload_id) + "/"

    def _staged_key(self, upload_id: str, name: str) -> str:
        return self._upload_prefix(upload_id) + name

    # ---------------------------------------------------------------- content

    async def stat(self, digest: Digest) -> BlobInfo | None:
        """The object's HEAD, sent presigned by plain aiohttp: every blob GET asks it, and
        botocore's request and response pipeline costs more time and CPU than the request
        itself (measured in docs/benchmarks.md). Retried as botocore's standard mode would."""
        url = await self._presigned("head_object", self._blob_key(digest), _HEAD_EXPIRY)
        for _ in range(_HEAD_ATTEMPTS - 1):
            with suppress(_Transient):
                return await self._head(url)
        return await self._head(url)

    async def _head(self, url: str) -> BlobInfo | None:
        assert self._http is not None, "the store is not open"
        try:
            async with self._http.head(url, allow_redirects=False, **self._proxy) as response:
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            reason = _one_line(error, self.endpoint)
            if "proxy" in self._proxy and type(error) is aiohttp.ClientResponseError:  # may be the proxy's
                reason += f" through the proxy {self._proxy['proxy'].host}:{self._proxy['proxy'].port}"
            raise _Transient(COMPONENT, reason) from error
        if status == 200:
            return _blob_info(headers)
        if status == 404:
            return None
        if status == 403:
            raise StorageUnavailable(COMPONENT, _ACCESS_DENIED.format(code=status))
        if status in _PROXY_AUTH and self._proxy:
            raise StorageUnavailable(COMPONENT, _PROXY_REFUSED.format(status=status))
        if status == 400:
            raise StorageUnavailable(COMPONENT, _PRESIGNED_REFUSED)
        failure = _Transient if status >= 500 or status == 429 else StorageUnavailable
        raise failure(COMPONENT, f"HTTP {status} to a HEAD of an object")

    def local_path(self, digest: Digest) -> str | None:
        return None

    async def url(self, digest: Digest, *, expires: float) -> str | None:
        """A presigned GET, handed out again for a while (signed for that much longer, so it
        is valid for ``expires`` seconds whenever it is handed out)."""
        key, reuse = self._blob_key(digest), min(_URL_REUSE, expires / 20)
        url = self._signed.get((key, expires), reuse)
        if url is None:
            signed = time.monotonic()  # before signing: the URL's life starts no later
            url = await self._presigned("get_object", key, expires + reuse)
            self._signed.put((key, expires), url, signed)
        return url

    async def _presigned(self, operation: str, key: str, expires: float) -> str:
        if self._client is None:
            raise StorageUnavailable(COMPONENT, "the store is not open")
        try:
            url: str = await self._client.generate_presigned_url(
                operation, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=max(1, int(expires))
            )
        except botocore.exceptions.BotoCoreError as error:  # no credentials
            raise StorageUnavailable(COMPONENT, _one_line(error, self.endpoint)) from error
        return url

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in self._read_key(self._blob_key(digest), offset, length):
            yield chunk

    async def _read_key(self, key: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        if length == 0:
            return
        last = "" if length is None else str(offset + length - 1)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or length is not None:
            params["Range"] = f"bytes={offset}-{last}"
        response = await self._call("get_object", **params)
        remaining: int = response["ContentLength"]
        async with response["Body"] as body:
            # Whole 1 MiB chunks: the HTTP client hands out what each packet brought (~256 KiB
            # on average), and every chunk costs a trip through the ASGI server.
            content = body.raw_stream.content
            try:
                while remaining > 0:
                    chunk = await content.readexactly(min(_READ_CHUNK, remaining))
                    remaining -= len(chunk)
                    yield chunk
            except asyncio.IncompleteReadError as error:
                raise StorageUnavailable(COMPONENT, f"the object store ended a read early: {key}") from error
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                raise StorageUnavailable(COMPONENT, _one_line(error, self.endpoint)) from error

    async def delete(self, digest: Digest) -> None:
        with suppress(_Missing):
            await self._call("delete_object", Bucket=self.bucket, Key=self._blob_key(digest))

    async def digests(self) -> AsyncIterator[tuple[Digest, BlobInfo]]:
        start = len(self._key("blobs", ""))
        async for item in self._list(self._key("blobs", "")):
            text = item["Key"][start:].replace("/", ":", 1)
            if digest_error(text) is None:
                yield Digest(text), BlobInfo(size=item["Size"], modified=item["LastModified"].timestamp())

    async def _list(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token is not None:
                params["ContinuationToken"] = token
            page = await self._call("list_objects_v2", **params)
            for item in page.get("Contents", []):
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or token is None:
                return

    # ---------------------------------------------------------------- staging

    async def stage_create(self, upload_id: str) -> bytes:
        # An empty marker, so that :meth:`staged` lists the upload before its first byte.
        await self._put(self._staged_key(upload_id, _CREATED), b"")
        return _encode_stage(_Stage())

    async def stage_append(
        self,
        upload_id: str,
        stage: bytes,
        offset: int,
        chunks: AsyncIterator[bytes],
        destination: Digest | None = None,
    ) -> tuple[int, bytes]:
        recorded = _decode_stage(stage)
        if recorded.direct is not None:
            raise ValueError("a stage written straight to its blob takes no further bytes")
        if recorded.size != offset:
            raise ValueError(f"the staging state holds {recorded.size} bytes, the session {offset}")
        await self._delete_keys([self._staged_key(upload_id, name) for name in recorded.stale])
        writer = (
            _DirectWriter(self, upload_id, self._blob_key(destination))
            if destination is not None and recorded.size == 0
            else _StageWriter(self, upload_id, recorded)
        )
        try:
            async for chunk in chunks:
                await writer.add(chunk)
        except BaseException:
            await writer.cancel()
            raise
        return writer.written, _encode_stage(await writer.finish())

    def stage_read(self, upload_id: str, stage: bytes, size: int) -> AsyncIterator[bytes]:
        recorded = _decode_stage(stage)
        if recorded.direct is not None:  # the caller hashed it on the way: nothing to read back
            raise ValueError("a stage written straight to its blob cannot be read back")
        return self._read_staged(upload_id, recorded, size)

    async def _read_staged(self, upload_id: str, stage: _Stage, size: int) -> AsyncIterator[bytes]:
        for name, part_size in [*stage.parts, *stage.pieces]:
            if size <= 0:
                return
            async for chunk in self._read_key(self._staged_key(upload_id, name), 0, min(part_size, size)):
                size -= len(chunk)
                yield chunk

    async def stage_commit(self, upload_id: str, stage: bytes, size: int, digest: Digest) -> None:
        recorded = _decode_stage(stage)
        if recorded.size != size:
            raise ValueError(f"the staging state holds {recorded.size} bytes, the commit names {size}")
        if recorded.direct is not None:
            await self._complete_direct(recorded.direct, self._blob_key(digest))
            await self._delete_keys([self._staged_key(upload_id, _CREATED)])
            return
        present = await self.stat(digest)
        if present is None or present.size != size:
            await self._publish(upload_id, recorded, self._blob_key(digest))
        # A run a crash cut off is left to the purge (see :meth:`staged`).
        await self._delete_staged(self._upload_prefix(upload_id))

    async def _publish(self, upload_id: str, stage: _Stage, key: str) -> None:
        """Make ``key`` hold the staged bytes, all at once: one server-side copy of a single
        staging object, else a multipart upload completed from server-side part copies (pieces
        but the last, small, travel once more joined into the last part)."""
        sources = [(self._staged_key(upload_id, name), size) for name, size in stage.parts]
        pieces = [(self._staged_key(upload_id, name), size) for name, size in stage.pieces]
        if len(pieces) == 1:
            sources, pieces = sources + pieces, []
        if len(sources) == 1 and not pieces and sources[0][1] <= _MAX_PART:
            source = {"Bucket": self.bucket, "Key": sources[0][0]}
            await self._call("copy_object", Bucket=self.bucket, Key=key, CopySource=source)
            return
        if not sources:
            body = b"".join([await self._get_bytes(piece) for piece, _ in pieces])
            await self._call("put_object", Bucket=self.bucket, Key=key, Body=body, ContentType=_CONTENT_TYPE)
            return
        created = await self._call(
            "create_multipart_upload", Bucket=self.bucket, Key=key, ContentType=_CONTENT_TYPE
        )
        multipart = {"Bucket": self.bucket, "Key": key, "UploadId": created["UploadId"]}
        try:
            ranges = [(source, span) for source, size in sources for span in _copy_ranges(size)]
            etags = await _bounded_gather(
                [self._copy_part(multipart, number, *copied) for number, copied in enumerate(ranges, 1)]
            )
            if pieces:
                body = b"".join([await self._get_bytes(piece) for piece, _ in pieces])
                sent = await self._call("upload_part", **multipart, PartNumber=len(etags) + 1, Body=body)
                etags.append(sent["ETag"])
            parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, 1)]
            await self._call("complete_multipart_upload", **multipart, MultipartUpload={"Parts": parts})
        except BaseException:
            await self._abort_multipart(multipart)
            raise

    async def _copy_part(self, multipart: dict[str, Any], number: int, source: str, span: str | None) -> str:
        copied = await self._call(
            "upload_part_copy",
            **multipart,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": source},
            **({"CopySourceRange": span} if span is not None else {}),
        )
        etag: str = copied["CopyPartResult"]["ETag"]
        return etag

    async def _abort_multipart(self, multipart: dict[str, Any]) -> None:
        # An incomplete multipart upload is invisible; if aborting fails too, a bucket
        # lifecycle rule (AbortIncompleteMultipartUpload) reaps it.
        with suppress(_Missing, StorageUnavailable):
            await self._call("abort_multipart_upload", **multipart)

    async def _get_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self._read_key(key)])

    async def _put(self, key: str, body: bytes | memoryview | _PartBody) -> None:
        await self._call("put_object", Bucket=self.bucket, Key=key, Body=body, ContentType=_CONTENT_TYPE)

    async def _complete_direct(self, direct: tuple[str, str, list[tuple[str, int]]], key: str) -> None:
        written_to, multipart_id, parts = direct
        if written_to != key:  # security: a stage commits only as the blob it was written as
            raise ValueError(f"the stage was written as {written_to}, not {key}")
        numbered = [{"PartNumber": number, "ETag": etag} for number, (etag, _) in enumerate(parts, 1)]
        await self._call(
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=key,
            UploadId=multipart_id,
            MultipartUpload={"Parts": numbered},
        )

    async def stage_abort(self, upload_id: str, stage: bytes | None) -> None:
        if stage is not None and (direct := _decode_stage(stage).direct) is not None:
            await self._abort_multipart({"Bucket": self.bucket, "Key": direct[0], "UploadId": direct[1]})
        prefix = self._upload_prefix(upload_id)
        async for multipart, _ in self._unfinished(prefix):  # runs of requests cut off by a crash
            await self._abort_multipart(multipart)
        await self._delete_staged(prefix)

    async def _delete_staged(self, prefix: str) -> None:
        """Every object under an upload's ``prefix``: listed, not taken from the stage, as a
        failed or overtaken request may have left objects the stage does not name."""
        await self._delete_keys([item["Key"] async for item in self._list(prefix)])

    async def _unfinished(self, prefix: str) -> AsyncIterator[tuple[dict[str, Any], float]]:
        """The multipart uploads under ``prefix`` that were neither completed nor aborted, each
        with the time it began."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = await self._call("list_multipart_uploads", **params)
            for upload in page.get("Uploads", []):
                multipart = {"Bucket": self.bucket, "Key": upload["Key"], "UploadId": upload["UploadId"]}
                yield multipart, upload["Initiated"].timestamp()
            if not page.get("IsTruncated"):
                return
            params.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])

    async def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
            answer = await self._call(
                "delete_objects", Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            failed = [error for error in answer.get("Errors", []) if error.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise StorageUnavailable(COMPONENT, f"deleting {first.get('Key')}: {first.get('Message')}")

    async def staged(self) -> AsyncIterator[tuple[str, float]]:
        """Uploads with staging objects, and those with only a run a crash cut off (an
        unfinished multipart upload, left by a commit so that a commit need not list them)."""
        prefix = self._key("uploads", "")
        latest: dict[str, float] = {}

        def seen(key: str, when: float) -> None:
            upload_id = key[len(prefix) :].partition("/")[0]
            latest[upload_id] = max(latest.get(upload_id, 0.0), when)

        async for item in self._list(prefix):
            seen(item["Key"], item["LastModified"].timestamp())
        async for multipart, initiated in self._unfinished(prefix):
            seen(multipart["Key"], initiated)
        for upload_id, modified in latest.items():
            yield upload_id, modified


class _StageWriter:
    """Streams one request's chunks after a recorded stage into one new staging object: a
    multipart upload of its own (a *run*), completed when the request ends, so that an upload
    sent in one long request is one object to copy at the commit. A request too short for a
    part leaves a piece instead.

    Bytes are copied once, into a part buffer of the part's size; a full buffer is itself the
    body of the part's upload, and returns for reuse once that upload is done. At most
    ``_PARTS_IN_FLIGHT`` parts are being sent while the next one fills, so memory stays at
    ``_PARTS_IN_FLIGHT + 1`` part buffers whatever the request's size.
    """

    def __init__(self, store: S3BlobStore, upload_id: str, recorded: _Stage, key: str | None = None) -> None:
        self.store = store
        self.upload_id = upload_id
        self.offset = recorded.size
        self.written = 0
        self.pieces = list(recorded.pieces)
        self.stale: list[str] = []
        self.buffer = bytearray()
        self.filled = 0
        self.spare: list[bytearray] = []
        self.in_flight: list[tuple[asyncio.Task[None], bytearray | None]] = []
        self.recorded = recorded
        self.run = _new_name("run")
        self.key = key if key is not None else store._staged_key(upload_id, self.run)
        self.multipart: dict[str, Any] | None = None
        #: (ETag, size) of the run's parts, in order; an ETag is filled in once its part is sent.
        self.sent: list[tuple[str, int]] = []

    @property
    def _pending(self) -> int:
        """Bytes after the recorded parts not yet in a part: old pieces plus the buffer."""
        return sum(size for _, size in self.pieces) + self.filled

    async def add(self, chunk: bytes) -> None:
        self.written += len(chunk)
        view = memoryview(chunk)
        while view:
            target = _part_size(self.offset)
            if len(self.buffer) != target:
                self._resize(target)
            take = min(len(view), target - self._pending)
            self.buffer[self.filled : self.filled + take] = view[:take]
            self.filled += take
            view = view[take:]
            if self._pending >= target:
                await self._flush_part(target)

    def _resize(self, size: int) -> None:
        """A part buffer of ``size`` bytes holding what the current one holds."""
        reused = next((b for b in self.spare if len(b) == size), None)
        fresh = reused if reused is not None else bytearray(size)
        if reused is not None:
            self.spare.remove(reused)
        fresh[: self.filled] = memoryview(self.buffer)[: self.filled]
        self.buffer = fresh

    async def finish(self) -> _Stage:
        try:
            if not self.sent and self._pending >= _MIN_PART:
                return await self._one_part_run()
            if not self.sent:
                await self._leave_piece()
                return _Stage(parts=list(self.recorded.parts), pieces=self.pieces, stale=self.stale)
            if self.filled:  # a run's last part may be of any size
                await self._flush_part(self.filled)
            await self._settle()
            return await self._sealed()
        except BaseException:
            await self.cancel()
            raise

    async def _one_part_run(self) -> _Stage:
        """A run of one part is one PUT, not the three requests of a multipart upload."""
        body = await self._take(self._pending)
        await self.store._put(self.key, _PartBody(memoryview(body)))
        return _Stage(parts=[*self.recorded.parts, (self.run, len(body))], stale=self.stale)

    async def _leave_piece(self) -> None:
        if self.filled:
            name = _new_name("piece")
            piece = bytes(memoryview(self.buffer)[: self.filled])
            await self.store._put(self.store._staged_key(self.upload_id, name), piece)
            self.pieces.append((name, len(piece)))

    async def _sealed(self) -> _Stage:
        """The stage once every part is sent: the run completed, one staging object."""
        assert self.multipart is not None
        numbered = [{"PartNumber": number, "ETag": etag} for number, (etag, _) in enumerate(self.sent, 1)]
        await self.store._call(
            "complete_multipart_upload", **self.multipart, MultipartUpload={"Parts": numbered}
        )
        run = (self.run, sum(size for _, size in self.sent))
        return _Stage(parts=[*self.recorded.parts, run], stale=self.stale)

    async def _flush_part(self, size: int) -> None:
        """Send the first ``size`` pending bytes as the run's next part."""
        try:
            if self.multipart is None:
                created = await self.store._call(
                    "create_multipart_upload",
                    Bucket=self.store.bucket,
                    Key=self.key,
                    ContentType=_CONTENT_TYPE,
                )
                self.multipart = {
                    "Bucket": self.store.bucket,
                    "Key": self.key,
                    "UploadId": created["UploadId"],
                }
            body = await self._take(size)
            self.sent.append(("", len(body)))
            self.offset += len(body)
            while len(self.in_flight) >= _PARTS_IN_FLIGHT:
                await self._settle_one()
            # A view, not the bytearray: the HTTP client would copy a bytearray it slices.
            view = memoryview(body) if isinstance(body, bytearray) else body
            task = asyncio.ensure_future(self._send(len(self.sent), view))
            self.in_flight.append((task, body if isinstance(body, bytearray) else None))
        except BaseException:
            await self.cancel()
            raise

    async def _send(self, number: int, body: bytes | memoryview) -> None:
        assert self.multipart is not None
        answer = await self.store._call(
            "upload_part", **self.multipart, PartNumber=number, Body=_PartBody(body)
        )
        self.sent[number - 1] = (answer["ETag"], self.sent[number - 1][1])

    async def _take(self, size: int) -> bytearray | bytes:
        """The first ``size`` pending bytes, removed: the full buffer itself when it is exactly
        the part (the common case), else a copy joined with the old pieces read back."""
        buffer = memoryview(self.buffer)
        if not self.pieces and size == self.filled == len(self.buffer):
            body: bytearray | bytes = self.buffer
            self.buffer, self.filled = bytearray(), 0
            return body
        head = [
            await self.store._get_bytes(self.store._staged_key(self.upload_id, n)) for n, _ in self.pieces
        ]
        take = size - sum(len(piece) for piece in head)
        body = b"".join([*head, buffer[:take]])
        buffer[: self.filled - take] = buffer[take : self.filled]
        self.filled -= take
        self.stale.extend(name for name, _ in self.pieces)
        self.pieces = []
        return body

    async def _settle_one(self) -> None:
        task, buffer = self.in_flight.pop(0)
        await task
        if buffer is not None:
            self.spare.append(buffer)

    async def _settle(self) -> None:
        while self.in_flight:
            await self._settle_one()

    async def cancel(self) -> None:
        for task, _ in self.in_flight:
            task.cancel()
        await asyncio.gather(*(task for task, _ in self.in_flight), return_exceptions=True)
        self.in_flight = []
        if self.multipart is not None:
            await self.store._abort_multipart(self.multipart)
            self.multipart = None


class _DirectWriter(_StageWriter):
    """A monolithic upload streamed into a multipart upload at its blob's own key, so that
    publishing it is one ``CompleteMultipartUpload`` rather than a server-side copy of every
    byte (which the object store performs at about the speed of the upload itself). Nothing
    is visible at the key until the caller, having checked the digest, commits the stage; a
    body that ends in a failure aborts the multipart upload."""

    def __init__(self, store: S3BlobStore, upload_id: str, key: str) -> None:
        super().__init__(store, upload_id, _Stage(), key)

    async def _one_part_run(self) -> _Stage:
        """Still a multipart upload: a PUT would show the blob before its digest is checked."""
        await self._flush_part(self._pending)
        await self._settle()
        return await self._sealed()

    async def _sealed(self) -> _Stage:
        """Left unfinished: the commit completes it once the caller has checked the digest.
        (A blob smaller than S3's smallest part is left as a piece, published by a copy.)"""
        assert self.multipart is not None
        return _Stage(direct=(self.key, self.multipart["UploadId"], list(self.sent)))


class _PartBody:
    """A part's bytes as botocore and aiohttp take them without a copy of their own.

    botocore reads the body (the SigV4 payload hash over plain HTTP) and seeks back; aiohttp,
    given an async iterable, sends it in slices and waits for the socket between them. Handed
    the buffer itself, the HTTP client would write it whole and keep what the socket did not
    take at once (most of a part) in a buffer of its own: a third part's worth of memory."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)
        self._position = 0

    def __len__(self) -> int:
        return len(self._data)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: len(self._data)}[whence]
        self._position = min(max(base + offset, 0), len(self._data))
        return self._position

    def read(self, size: int = -1) -> memoryview:
        end = len(self._data) if size < 0 else min(self._position + size, len(self._data))
        piece = self._data[self._position : end]
        self._position = end
        return piece

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        while piece := self.read(_SEND_SLICE):
            yield piece


def _session() -> Any:
    """A botocore session, which resolves the credentials afresh, sharing the loader of the
    service models (loading them anew costs a fraction of a second per store)."""
    session = get_session()
    session.register_component("data_loader", _model_loader())
    return session


@functools.cache
def _model_loader() -> Any:
    loader = create_loader()
    loader.file_loader = _CompactModels()
    return loader


class _CompactModels(JSONFileLoader):  # type: ignore[misc]
    """botocore's model files as plain dicts without their documentation.

    A client keeps its service model for its whole life: S3's is 1.3 MB of JSON, four fifths
    of it documentation (which only the generated docstrings read), parsed into OrderedDicts,
    and the endpoint tables come on top. Plain dicts (ordered, and all botocore asks of a
    mapping) without that documentation cost each worker about 5 MB less."""

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as source:
            payload = source.read().decode("utf-8")
        return json.loads(payload, object_pairs_hook=_without_documentation)


def _without_documentation(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Emptied, not dropped: botocore reads some of these keys.
    return {key: "" if key in _DOCUMENTATION else value for key, value in pairs}


def _copy_ranges(size: int) -> list[str | None]:
    """How a staging object of ``size`` bytes is copied as parts: whole (None) when S3 takes
    it as one part, else in equal ranges no larger than a part may be (each well above the
    smallest part, which every part but the blob's last must reach)."""
    if size <= _MAX_PART:
        return [None]
    count = -(-size // _MAX_PART)
    bounds = [size * index // count for index in range(count + 1)]
    return [f"bytes={start}-{end - 1}" for start, end in itertools.pairwise(bounds)]


def _new_name(kind: str) -> str:
    """A staging object name used once: a request that fails can never overwrite an object
    that a recorded stage names."""
    return f"{kind}-{secrets.token_hex(12)}"


async def _bounded_gather(calls: list[Awaitable[str]]) -> list[str]:
    """Await ``calls`` with at most a few in flight; their results in order."""
    limit = asyncio.Semaphore(_COPY_CONCURRENCY)

    async def bounded(call: Awaitable[str]) -> str:
        async with limit:
            return await call

    return list(await asyncio.gather(*(bounded(call) for call in calls)))


def _raise_for_client_error(error: botocore.exceptions.ClientError, *, proxied: bool) -> NoReturn:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status in _PROXY_AUTH and proxied:
        raise StorageUnavailable(COMPONENT, _PROXY_REFUSED.format(status=status)) from error
    code = error.response.get("Error", {}).get("Code", "")
    if status == 404 or code in {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}:
        raise _Missing(code) from error
    if status == 403 or code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        raise StorageUnavailable(COMPONENT, _ACCESS_DENIED.format(code=code or status)) from error
    message = error.response.get("Error", {}).get("Message", "") or str(error)
    raise StorageUnavailable(COMPONENT, f"{code or status}: {message}".splitlines()[0]) from error


def _blob_info(headers: Any) -> BlobInfo:
    try:
        modified = parsedate_to_datetime(headers["Last-Modified"]).timestamp()
        return BlobInfo(size=int(headers["Content-Length"]), modified=modified)
    except (KeyError, TypeError, ValueError) as error:
        raise StorageUnavailable(COMPONENT, f"the store answered a HEAD without a valid {error}") from error


def _plain_http(ca_bundle: str | None) -> aiohttp.ClientSession:
    """The HTTP client for presigned requests, trusting what botocore trusts: ``AWS_CA_BUNDLE``
    or ``ca_bundle`` in ~/.aws/config, else the system's roots."""
    context = ssl.create_default_context(cafile=ca_bundle)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, ssl=context),
        timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=60),
        auto_decompress=False,
    )


def _proxy_for(url: str) -> dict[str, Any]:
    """aiohttp's arguments for the proxy the environment names for the store's URLs (as
    botocore honours ``HTTPS_PROXY`` and ``NO_PROXY``), decided once: aiohttp's ``trust_env``
    looks it up again for every request, which made a HEAD take twice as long."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy is None or urllib.request.proxy_bypass(parts.hostname or ""):
        return {}
    address = yarl.URL(proxy)
    credentials = aiohttp.BasicAuth.from_url(address)
    if credentials is None:
        return {"proxy": address}
    # aiohttp sends proxy_headers only on the CONNECT that tunnels an https:// URL; an http://
    # request goes to the proxy whole, so it carries the credentials itself.
    where = "headers" if parts.scheme == "http" else "proxy_headers"
    return {"proxy": address.with_user(None), where: {"Proxy-Authorization": credentials.encode()}}


def _one_line(error: BaseException, endpoint: str | None) -> str:
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure ~/.aws"
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return f"cannot connect to {endpoint or 'the S3 endpoint'}"
    if isinstance(error, (botocore.exceptions.HTTPClientError, botocore.exceptions.ProxyConnectionError)):
        error = error.kwargs.get("error", error)
    if isinstance(error, aiohttp.ClientHttpProxyError):  # its answer to a CONNECT
        if error.status in _PROXY_AUTH:
            return _PROXY_REFUSED.format(status=error.status)
        return f"the proxy answered HTTP {error.status} ({error.message})"
    if isinstance(error, aiohttp.ClientResponseError):  # its text names the (presigned) URL
        reason = error.message.splitlines()[0].rstrip(":") if error.message else str(error.status)
        return f"an invalid HTTP response ({reason})"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
