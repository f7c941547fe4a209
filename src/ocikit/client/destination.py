"""Writing images to a registry: the ``docker://`` :class:`~ocikit.store.transport.ImageDestination`.

Small blobs go up in two requests (POST, then PUT with the body). Larger ones go in chunks of
``chunk_size`` (at least the registry's ``OCI-Chunk-Min-Length``), each PATCH carrying a
``Content-Range``. The bytes of the chunk in flight are kept, and only those, so a chunk whose
connection breaks is resumed from the offset the registry reports (GET on the upload) without
re-reading the source: memory stays bounded by one chunk per upload.

The registry verifies the digest when the upload is closed; its ``DIGEST_INVALID`` or
``SIZE_INVALID`` answer becomes a :class:`~ocikit.spec.VerificationError`, and a failed upload
is cancelled so that nothing of it remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, Final, Literal

import msgspec

from ..spec import Descriptor, Reference, VerificationError, mediatype
from ..spec.digest import verify_bytes
from ..spec.models import ImageIndex, encode
from ..spec.numbers import decimal
from ..store.transport import ImageSource, TransportError
from .endpoint import RepositoryEndpoint
from .errors import AuthenticationError, RegistryError, UploadLost, error_from_response
from .http import ConnectionFailed, IncompleteBody
from .options import ClientOptions
from .session import RegistryClient, pull_scope, push_scope
from .source import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE, bare_media_type, referrers_tag

__all__ = ["DEFAULT_CHUNK_SIZE", "MONOLITHIC_LIMIT", "RegistryDestination"]

#: Blobs up to this size are uploaded in one PUT (held in memory, so they can be retried whole).
MONOLITHIC_LIMIT: Final = 4 << 20
#: Bytes per PATCH for larger blobs, and so the memory one upload holds for retrying a chunk.
DEFAULT_CHUNK_SIZE: Final = 32 << 20


#: The largest ``OCI-Chunk-Min-Length`` honoured: the chunk in flight is kept in memory.
MAX_CHUNK_MIN_LENGTH: Final = 256 << 20


class _Feed:
    """Bytes of the source in exact-length pieces, each kept until it has been accepted."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int, where: str) -> None:
        self._chunks = aiter(chunks)
        self._size = size
        self._where = where
        self._pulled = 0
        self._spill = b""
        self._kept: list[bytes] = []

    async def _next(self, limit: int) -> bytes:
        if self._spill:
            piece, self._spill = self._spill[:limit], self._spill[limit:]
            return piece
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            raise VerificationError(
                f"{self._where}: the source ended after {self._pulled} of {self._size} bytes"
            ) from None
        self._pulled += len(chunk)
        if self._pulled > self._size:
            raise VerificationError(f"{self._where}: the source has more than the {self._size} bytes")
        if len(chunk) > limit:
            chunk, self._spill = chunk[:limit], chunk[limit:]
        return chunk

    async def piece(self, length: int, skip: int = 0) -> AsyncIterator[bytes]:
        """``length`` bytes from the start of the current piece plus ``skip``: first what is kept,
        then more from the source (kept too)."""
        have = sum(len(chunk) for chunk in self._kept)
        position = 0
        for chunk in list(self._kept):
            end = position + len(chunk)
            if end > skip:
                yield chunk[max(0, skip - position) :]
            position = end
        while have < length:
            chunk = await self._next(length - have)
            self._kept.append(chunk)
            have += len(chunk)
            yield chunk if have - len(chunk) >= skip else chunk[skip - (have - len(chunk)) :]

    def accept(self) -> None:
        """The current piece is stored at the registry: forget it."""
        self._kept.clear()

    async def check_end(self) -> None:
        """The source must end exactly at the blob's size."""
        if self._spill:
            raise VerificationError(f"{self._where}: the source has more than the {self._size} bytes")
        extra = await anext(self._chunks, None)
        while extra is not None and not extra:
            extra = await anext(self._chunks, None)
        if extra is not None:
            raise VerificationError(f"{self._where}: the source has more than the {self._size} bytes")


class RegistryDestination(RepositoryEndpoint):
    """``docker://HOST/REPO[:TAG]`` as an image destination.

    Besides the protocol, :meth:`mount_blob` asks the registry to link a blob that another of its
    repositories already holds (the copy's source, or one the blob location record names),
    which a copy uses instead of transferring the bytes.
    """

    def __init__(
        self,
        reference: Reference,
        options: ClientOptions | None = None,
        *,
        client: RegistryClient | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        monolithic_limit: int = MONOLITHIC_LIMIT,
    ) -> None:
        super().__init__(reference, options, client, push_scope(reference.repository))
        self.chunk_size = chunk_size
        self.monolithic_limit = monolithic_limit
        #: Uploads a refused mount started (location, smallest chunk), by digest, for that
        #: blob's put_blob to use.
        self._started: dict[str, tuple[str, int]] = {}
        #: Repositories whose blobs these credentials may not read: never mounted from.
        self._unreadable: set[str] = set()

    async def has_blob(self, descriptor: Descriptor) -> bool:
        kind = "manifests" if descriptor.media_type in mediatype.IMAGE_DOCUMENT_TYPES else "blobs"
        headers = [("Accept", MANIFEST_ACCEPT)] if kind == "manifests" else []
        response = await self.client.request(
            "HEAD", f"/v2/{self.repository}/{kind}/{descriptor.digest}", scopes=self._scopes, headers=headers
        )
        await response.aclose()
        if response.status == 404:
            return False
        await self.client.expect(response, (200,), f"check {self._name(descriptor.digest)}")
        found = response.content_length in (None, descriptor.size)
        if found and kind == "blobs":
            self._seen(descriptor.digest)
        return found

    async def mount_blob(self, descriptor: Descriptor, source: ImageSource) -> bool:
        """The ``MountsBlobs`` capability of the copy engine: link the blob from a repository of
        this registry that holds it instead of transferring it. Candidates are ``source`` when
        it is another repository of this same registry, then the repositories the blob location
        record names, newest first. False when none will do (the copy uploads then); no request
        at all when there is no candidate."""
        candidates = self._mount_candidates(descriptor, source)
        for repository in candidates:
            outcome = await self._try_mount(descriptor, repository, keep_upload=True)
            if outcome == "mounted":
                return True
            if outcome == "upload":
                break  # the registry started an upload: the blob goes up through it
        return False

    def _mount_candidates(self, descriptor: Descriptor, source: ImageSource) -> list[str]:
        found: list[str] = []
        if isinstance(source, RepositoryEndpoint) and source.client.base_url == self.client.base_url:
            found.append(source.repository)
        if self.locations is not None:
            found += self.locations.candidates(
                self.client.registry, descriptor.digest, exclude=self.repository
            )
        ordered = dict.fromkeys(r for r in found if r != self.repository and r not in self._unreadable)
        return list(ordered)

    async def mount_from(self, descriptor: Descriptor, from_repository: str) -> bool:
        """Link the blob from ``from_repository`` of the same registry; False when the registry
        would not (no mount support, no such blob, or no pull access there): upload it then."""
        return await self._try_mount(descriptor, from_repository, keep_upload=False) == "mounted"

    async def _try_mount(
        self, descriptor: Descriptor, from_repository: str, *, keep_upload: bool
    ) -> Literal["mounted", "upload", "refused"]:
        """One mount request. A registry that cannot mount usually starts an ordinary upload
        instead (202): with ``keep_upload`` the next :meth:`put_blob` of this blob sends its bytes
        there, so a stale location costs this one request and nothing more."""
        query = urllib.parse.urlencode({"mount": descriptor.digest, "from": from_repository})
        try:
            # Security: the token asked for carries pull on the source repository, so a
            # registry with token auth mounts only from what these credentials may read.
            response = await self.client.request(
                "POST",
                f"/v2/{self.repository}/blobs/uploads/?{query}",
                scopes=[*self._scopes, pull_scope(from_repository)],
                body=b"",
            )
        except AuthenticationError:
            self._unreadable.add(from_repository)  # the token service refused pull there
            self._not_there(descriptor, from_repository)
            return "refused"
        if response.status == 201:
            await response.aclose()
            self._seen(descriptor.digest)
            self._seen(descriptor.digest, from_repository)
            return "mounted"
        self._not_there(descriptor, from_repository)
        location = response.headers.get("location")
        if response.status == 202:
            await response.aclose()
            sha256 = descriptor.digest.startswith("sha256:")  # what a mount's upload defaults to
            if keep_upload and location and sha256 and descriptor.digest not in self._started:
                min_chunk = _int_header(response.headers.get("oci-chunk-min-length"))
                self._started[descriptor.digest] = (location, min_chunk)
                return "upload"
            await self._cancel(location)
            return "upload"
        if 400 <= response.status < 500:  # no such blob there, no access, no mount support
            await response.aclose()
            if response.status in (401, 403):
                self._unreadable.add(from_repository)
            return "refused"
        await self.client.expect(response, (201,), f"mount {descriptor.digest} from {from_repository}")
        return "refused"

    def _not_there(self, descriptor: Descriptor, repository: str) -> None:
        if self.locations is not None:
            self.locations.forget(self.client.registry, repository, descriptor.digest)

    async def put_blob(self, descriptor: Descriptor, chunks: AsyncIterator[bytes]) -> None:
        where = f"upload {self._name(descriptor.digest)}"
        feed = _Feed(chunks, descriptor.size, where)
        monolithic = descriptor.size <= self.monolithic_limit
        data = b""
        if monolithic:
            data = b"".join([piece async for piece in feed.piece(descriptor.size)])
            await feed.check_end()
            try:
                verify_bytes(data, descriptor.digest, descriptor.size)
            except VerificationError as exc:
                raise VerificationError(f"{where}: the source's bytes: {exc}") from None
        algorithm = descriptor.digest.partition(":")[0]
        opened = self._started.pop(descriptor.digest, None) or await self._start_upload(where, algorithm)
        upload = _Upload(*opened, algorithm)
        try:
            if not monolithic:
                await self._upload_chunks(
                    upload, feed, descriptor.size, max(self.chunk_size, upload.min_chunk), where
                )
                await feed.check_end()
            await self._finish(upload.location, descriptor, where, data)
        except BaseException:
            await self._cancel(upload.location)
            raise
        self._seen(descriptor.digest)

    async def _start_upload(self, where: str, algorithm: str = "sha256") -> tuple[str, int]:
        """A new upload's location, and the smallest chunk the registry wants (0: any)."""
        query = "" if algorithm == "sha256" else "?" + urllib.parse.urlencode({"digest-algorithm": algorithm})
        response = await self.client.request(
            "POST", f"/v2/{self.repository}/blobs/uploads/{query}", scopes=self._scopes, body=b""
        )
        await self.client.expect(response, (202,), where)
        await response.aclose()
        location = response.headers.get("location")
        if not location:
            raise TransportError(f"{where}: the registry started an upload without a Location")
        smallest = _int_header(response.headers.get("oci-chunk-min-length"))
        if smallest > MAX_CHUNK_MIN_LENGTH:  # a chunk is held in memory until the registry takes it
            raise TransportError(
                f"{where}: the registry asks for chunks of at least {smallest} bytes; "
                f"this client holds at most {MAX_CHUNK_MIN_LENGTH} in memory"
            )
        return location, smallest

    async def _upload_chunks(self, upload: _Upload, feed: _Feed, size: int, chunk: int, where: str) -> None:
        offset = 0
        while offset < size:
            length = min(chunk, size - offset)
            skip, failures = 0, 0
            while skip < length:
                try:
                    upload.location = await self._patch(
                        upload.location, feed.piece(length, skip), offset + skip, length - skip, where
                    )
                    break
                except (ConnectionFailed, IncompleteBody, _RangeRefused) as exc:
                    failures += 1
                    if failures > self.client.options.retries:
                        raise TransportError(f"{where}: chunk at byte {offset + skip} failed: {exc}") from exc
                    await asyncio.sleep(min(0.2 * (1 << failures), 3.0))
                    skip = await self._resume_point(upload, offset, length, where)
            feed.accept()
            offset += length

    async def _resume_point(self, upload: _Upload, offset: int, length: int, where: str) -> int:
        """Where a broken chunk continues, relative to its start, as the registry reports it."""
        try:
            upload.location, stored = await self._status(upload.location, where)
        except RegistryError as lost:
            # Some registries (distribution 2.x) drop an upload whose PATCH broke off. While
            # nothing but the chunk in hand was sent, a new upload can take its place.
            if offset:
                raise UploadLost(
                    f"{where}: the registry dropped the upload when a chunk at byte {offset} broke off, "
                    "and the bytes before it are gone from memory: upload the blob again"
                ) from lost
            upload.location, _ = await self._start_upload(where, upload.algorithm)
            return 0
        if not offset <= stored <= offset + length:
            raise TransportError(
                f"{where}: cannot resume: the registry holds {stored} bytes, the chunk starts at {offset}"
            )
        return stored - offset

    async def _patch(
        self, location: str, body: AsyncIterator[bytes], start: int, length: int, where: str
    ) -> str:
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", f"{start}-{start + length - 1}"),
        ]
        response = await self.client.request(
            "PATCH", location, scopes=self._scopes, headers=headers, body=body, content_length=length
        )
        if response.status == 416:
            await response.aclose()
            raise _RangeRefused(f"the registry refused the range starting at {start}")
        await self.client.expect(response, (202,), where)
        await response.aclose()
        return response.headers.get("location") or location

    async def _status(self, location: str, where: str) -> tuple[str, int]:
        """Where an upload stands: its location and how many bytes the registry holds."""
        response = await self.client.request("GET", location, scopes=self._scopes)
        await self.client.expect(response, (204, 200), f"{where}: upload status")
        await response.aclose()
        end = decimal((response.headers.get("range") or "").removeprefix("bytes=").partition("-")[2].strip())
        stored = 0 if end is None else end + 1
        return response.headers.get("location") or location, stored

    async def _finish(self, location: str, descriptor: Descriptor, where: str, body: bytes) -> None:
        parts = urllib.parse.urlsplit(location)
        query = (parts.query + "&" if parts.query else "") + urllib.parse.urlencode(
            {"digest": descriptor.digest}
        )
        url = urllib.parse.urlunsplit(parts._replace(query=query))
        headers = [("Content-Type", "application/octet-stream")] if body else []
        response = await self.client.request("PUT", url, scopes=self._scopes, headers=headers, body=body)
        if response.status in (400, 416):
            error = await error_from_response(response, where)
            if {"DIGEST_INVALID", "SIZE_INVALID"} & set(error.codes):
                raise VerificationError(str(error))
            raise error
        if response.status == 404 and await self.has_blob(descriptor):
            return  # a retried PUT whose first attempt had succeeded
        await self.client.expect(response, (201,), where)
        await response.aclose()
        confirmed = response.headers.get("docker-content-digest")
        if confirmed and confirmed != descriptor.digest:
            raise VerificationError(f"{where}: the registry stored it as {confirmed}")

    async def _cancel(self, location: str | None) -> None:
        """Best effort: the registry expires abandoned uploads anyway."""
        if not location:
            return
        with contextlib.suppress(TransportError, OSError):
            response = await self.client.request("DELETE", location, scopes=self._scopes)
            await response.aclose()

    async def put_manifest(self, descriptor: Descriptor, raw: bytes, tags: list[str]) -> None:
        where = f"push manifest {self._name(descriptor.digest)}"
        try:
            verify_bytes(raw, descriptor.digest, descriptor.size)
        except VerificationError as exc:
            raise VerificationError(f"{where}: {exc}") from None
        if len(tags) == 1:
            # One tag: PUT by that tag, which every registry understands, in one request (a
            # registry without the ``tag`` parameter would need a second PUT by tag).
            path = f"/v2/{self.repository}/manifests/{tags[0]}"
        else:
            query = urllib.parse.urlencode([("tag", tag) for tag in tags])
            path = f"/v2/{self.repository}/manifests/{descriptor.digest}" + (f"?{query}" if query else "")
        headers = [("Content-Type", descriptor.media_type)]
        response = await self.client.request("PUT", path, scopes=self._scopes, headers=headers, body=raw)
        await self.client.expect(response, (201,), where)
        await response.aclose()
        confirmed = response.headers.get("docker-content-digest")
        if confirmed and confirmed != descriptor.digest:
            raise VerificationError(f"{where}: the registry stored it as {confirmed}")
        accepted = (
            set(tags)
            if len(tags) == 1
            else {tag.strip() for value in response.headers.get_list("oci-tag") for tag in value.split(",")}
        )
        for tag in tags:
            if tag not in accepted:
                await self._put_tag(descriptor, raw, tag)
        if "oci-subject" not in response.headers:
            await self._update_referrers_tag(descriptor, raw)

    async def _put_tag(self, descriptor: Descriptor, raw: bytes, tag: str) -> None:
        response = await self.client.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{tag}",
            scopes=self._scopes,
            headers=[("Content-Type", descriptor.media_type)],
            body=raw,
        )
        await self.client.expect(response, (201,), f"tag {self._name(descriptor.digest)} as {tag}")
        await response.aclose()

    async def _update_referrers_tag(self, descriptor: Descriptor, raw: bytes) -> None:
        """For registries without the referrers API: list a manifest with a ``subject`` in the
        index under the referrers tag schema, as the distribution-spec asks of clients."""
        document = json.loads(raw)
        subject = document.get("subject") if isinstance(document, dict) else None
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
            return
        tag = referrers_tag(subject["digest"])
        entry = Descriptor(
            media_type=descriptor.media_type,
            digest=descriptor.digest,
            size=descriptor.size,
            artifact_type=_artifact_type(document),
            annotations=document.get("annotations") or None,
        )
        index = await self._referrers_index(tag)
        if any(existing.digest == descriptor.digest for existing in index.manifests):
            return
        index.manifests.append(entry)
        body = encode(index)
        response = await self.client.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{tag}",
            scopes=self._scopes,
            headers=[("Content-Type", mediatype.OCI_INDEX)],
            body=body,
        )
        await self.client.expect(response, (201,), f"update referrers tag {self._name(tag)}")
        await response.aclose()

    async def _referrers_index(self, tag: str) -> ImageIndex:
        response = await self.client.request(
            "GET",
            f"/v2/{self.repository}/manifests/{tag}",
            scopes=self._scopes,
            headers=[("Accept", mediatype.OCI_INDEX)],
        )
        empty = ImageIndex(schema_version=2, media_type=mediatype.OCI_INDEX, manifests=[])
        if response.status == 404:
            await response.aclose()
            return empty
        await self.client.expect(response, (200,), f"fetch referrers tag {self._name(tag)}")
        served = bare_media_type(response.headers.get("content-type"))
        raw = await response.read(MAX_MANIFEST_SIZE)
        if served != mediatype.OCI_INDEX:
            raise TransportError(f"{self._name(tag)}: the referrers tag holds {served!r}, not an image index")
        try:
            return msgspec.json.decode(raw, type=ImageIndex)
        except msgspec.DecodeError as exc:
            raise TransportError(
                f"{self._name(tag)}: the referrers tag is not a valid index ({exc})"
            ) from None

    async def commit(self) -> None:
        """Nothing to do: a registry makes each blob and manifest visible as it is accepted."""

    async def close(self) -> None:
        """Cancel uploads a failed mount started that no blob used, then close as any endpoint."""
        started, self._started = list(self._started.values()), {}
        for location, _ in started:
            await self._cancel(location)
        await super().close()


class _RangeRefused(TransportError):
    pass


class _Upload(msgspec.Struct):
    """An upload session: where to send the next request (registries move it along)."""

    location: str
    min_chunk: int
    algorithm: str


def _artifact_type(document: dict[str, Any]) -> str | None:
    value = document.get("artifactType")
    if isinstance(value, str) and value:
        return value
    config = document.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return None


def _int_header(value: str | None) -> int:
    return (decimal(value.strip()) or 0) if value else 0
