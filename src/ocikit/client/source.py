"""Reading images from a registry: the ``docker://`` :class:`~ocikit.store.transport.ImageSource`.

Nothing a registry sends is trusted until checked: manifests against the size, digest and media
type of the descriptor they were asked for, blobs against their size as they stream and their
digest before the last byte is handed on, so a consumer never sees a complete wrong blob.
Downloads that break resume where they stopped with an HTTP ``Range`` request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import urlencode

import msgspec

from ..spec import Descriptor, Digest, Reference, VerificationError, digest_of, mediatype
from ..spec.digest import DigestError, digest_error, verify_bytes
from ..spec.models import ImageIndex
from ..spec.reference import is_valid_tag, referrers_tag
from ..store.transport import TransportError
from .endpoint import RepositoryEndpoint
from .http import ConnectionFailed, IncompleteBody
from .options import ClientOptions
from .session import RegistryClient, pull_scope

__all__ = [
    "MANIFEST_ACCEPT",
    "MAX_MANIFEST_SIZE",
    "RegistrySource",
    "bare_media_type",
    "check_manifest",
    "referrers_tag",
]

#: Every manifest and index type ocikit understands, so that the registry never converts one.
MANIFEST_ACCEPT: Final = ", ".join(
    [mediatype.OCI_INDEX, mediatype.OCI_MANIFEST, mediatype.DOCKER_MANIFEST_LIST, mediatype.DOCKER_MANIFEST]
)
#: Larger than any registry accepts (distribution: 4 MiB), small enough to hold in memory.
MAX_MANIFEST_SIZE: Final = 16 << 20
_REFERRERS_PAGES: Final = 100
_LINK_NEXT: Final = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def bare_media_type(value: str | None) -> str:
    """A Content-Type without parameters (``; charset=utf-8``), as descriptors carry it."""
    return (value or "").split(";", 1)[0].strip()


def check_manifest(raw: bytes, descriptor: Descriptor, where: str, content_type: str | None) -> None:
    """Refuse manifest bytes that do not match ``descriptor``: size, digest, media type, JSON."""
    if len(raw) != descriptor.size:
        raise VerificationError(
            f"{where}: the registry sent {len(raw)} bytes, the descriptor says {descriptor.size}"
        )
    try:
        verify_bytes(raw, descriptor.digest)
    except VerificationError as exc:
        raise VerificationError(f"{where}: {exc}") from None
    served = bare_media_type(content_type)
    if served and served != descriptor.media_type:
        raise VerificationError(
            f"{where}: served as {served!r}, but the descriptor says {descriptor.media_type!r}"
        )
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise VerificationError(f"{where}: the manifest is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise VerificationError(f"{where}: the manifest is not a JSON object")
    declared = document.get("mediaType")
    if declared is not None and declared != descriptor.media_type:
        raise VerificationError(
            f"{where}: the manifest declares mediaType {declared!r}, "
            f"the descriptor says {descriptor.media_type!r}"
        )


class RegistrySource(RepositoryEndpoint):
    """``docker://HOST/REPO[:TAG|@DIGEST]`` as an image source.

    ``verify_blobs`` (default on) makes :meth:`open_blob` check each blob's digest before it
    yields the final chunk; switch it off only when the caller hashes the bytes itself.
    """

    def __init__(
        self,
        reference: Reference,
        options: ClientOptions | None = None,
        *,
        client: RegistryClient | None = None,
        verify_blobs: bool = True,
    ) -> None:
        super().__init__(reference, options, client, pull_scope(reference.repository))
        self.verify_blobs = verify_blobs
        self._manifests: dict[str, tuple[bytes, str | None]] = {}

    def _path(self, kind: str, identifier: str) -> str:
        """Security decision: only a digest or a tag goes into the path, never what a hostile
        document calls a digest (``sha256:/../../v2/other/...`` resolves to another path)."""
        if digest_error(identifier) is not None and not is_valid_tag(identifier):
            raise VerificationError(f"{identifier[:80]!r} is neither a digest nor a tag")
        return f"/v2/{self.repository}/{kind}/{identifier}"

    async def resolve(self, reference: str | None = None) -> Descriptor:
        identifier = reference or self.reference.identifier
        is_digest = ":" in identifier
        if is_digest:
            try:
                Digest(identifier)
            except DigestError as exc:
                raise TransportError(str(exc)) from None
        what = f"resolve {self._name(identifier)}"
        headers = [("Accept", MANIFEST_ACCEPT)]
        response = await self.client.request(
            "HEAD", self._path("manifests", identifier), scopes=self._scopes, headers=headers
        )
        if response.status == 404:  # a HEAD answer has no body: GET says which of name or manifest
            await response.aclose()
            return await self._resolve_by_get(identifier, what)
        await self.client.expect(response, (200,), what)
        await response.aclose()
        digest = response.headers.get("docker-content-digest")
        media_type = bare_media_type(response.headers.get("content-type"))
        if digest and media_type in mediatype.IMAGE_DOCUMENT_TYPES and response.content_length is not None:
            if is_digest and digest != identifier:
                raise VerificationError(f"{what}: the registry answered for {digest} instead")
            return Descriptor(media_type=media_type, digest=Digest(digest), size=response.content_length)
        return await self._resolve_by_get(identifier, what)

    async def _resolve_by_get(self, identifier: str, what: str) -> Descriptor:
        """For registries whose HEAD lacks a digest or type: fetch and describe the bytes."""
        response = await self.client.request(
            "GET",
            self._path("manifests", identifier),
            scopes=self._scopes,
            headers=[("Accept", MANIFEST_ACCEPT)],
        )
        await self.client.expect(response, (200,), what)
        content_type = response.headers.get("content-type")
        raw = await response.read(MAX_MANIFEST_SIZE)
        digest = digest_of(raw)
        if ":" in identifier and digest != identifier:
            raise VerificationError(f"{what}: the registry sent content whose digest is {digest}")
        media_type = bare_media_type(content_type)
        if media_type not in mediatype.IMAGE_DOCUMENT_TYPES:
            try:
                declared = json.loads(raw).get("mediaType")
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, AttributeError):
                raise VerificationError(f"{what}: the manifest is not a JSON object") from None
            if declared not in mediatype.IMAGE_DOCUMENT_TYPES:
                raise TransportError(f"{what}: unsupported manifest media type {media_type or declared!r}")
            media_type = declared
        self._manifests[digest] = (raw, media_type)
        return Descriptor(media_type=media_type, digest=digest, size=len(raw))

    async def fetch_manifest(self, descriptor: Descriptor) -> bytes:
        where = f"manifest {self._name(descriptor.digest)}"
        cached = self._manifests.pop(descriptor.digest, None)
        if cached is not None:
            check_manifest(cached[0], descriptor, where, cached[1])
            return cached[0]
        if descriptor.size > MAX_MANIFEST_SIZE:
            raise TransportError(f"{where}: {descriptor.size} bytes is more than a manifest may have here")
        response = await self.client.request(
            "GET",
            self._path("manifests", descriptor.digest),
            scopes=self._scopes,
            headers=[("Accept", MANIFEST_ACCEPT)],
        )
        await self.client.expect(response, (200,), f"fetch {where}")
        if response.content_length is not None and response.content_length != descriptor.size:
            await response.aclose()
            raise VerificationError(
                f"{where}: the registry announces {response.content_length} bytes, "
                f"the descriptor says {descriptor.size}"
            )
        try:
            raw = await response.read(descriptor.size)
        except IncompleteBody:
            raise
        except TransportError:
            raise VerificationError(
                f"{where}: the registry sent more than the {descriptor.size} bytes"
            ) from None
        check_manifest(raw, descriptor, where, response.headers.get("content-type"))
        return raw

    async def open_blob(self, descriptor: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset``; a broken download resumes with ``Range`` up to
        ``options.retries`` times in a row. From offset 0 (and with ``verify_blobs``) the digest
        is checked before the final chunk is yielded."""
        size, where = descriptor.size, f"blob {self._name(descriptor.digest)}"
        if not 0 <= offset <= size:
            raise ValueError(f"offset {offset} is outside the blob's {size} bytes")
        digester = Digest(descriptor.digest).digester() if self.verify_blobs and offset == 0 else None
        position, failures = offset, 0
        while True:
            headers = [("Range", f"bytes={position}-")] if position else []
            try:
                response = await self.client.request(
                    "GET", self._path("blobs", descriptor.digest), scopes=self._scopes, headers=headers
                )
                await self.client.expect(response, (200, 206), f"fetch {where}")
                skip = _bytes_to_skip(response.status, response.headers.get("content-range"), position, where)
                async with contextlib.aclosing(response.iter_bytes()) as body:
                    async for received in body:
                        chunk = received
                        if skip:
                            chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                            if not chunk:
                                continue
                        position += len(chunk)
                        if position > size:
                            raise VerificationError(f"{where}: the registry sent more than the {size} bytes")
                        if digester is not None:
                            digester.update(chunk)
                            if position == size:
                                _check_digest(digester.digest(), descriptor.digest, where)
                        failures = 0
                        yield chunk
            except (ConnectionFailed, IncompleteBody) as exc:
                failures += 1
                if failures > self.client.options.retries:
                    raise TransportError(
                        f"{where}: download failed at byte {position} of {size}: {exc}"
                    ) from exc
                await asyncio.sleep(min(0.2 * (1 << failures), 3.0))
                continue
            if position < size:
                raise VerificationError(f"{where}: the registry sent {position} of the {size} bytes")
            if digester is not None and size == 0:
                _check_digest(digester.digest(), descriptor.digest, where)
            self._seen(descriptor.digest)
            return

    async def referrers(self, descriptor: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        """From the referrers API, or the referrers tag schema where the registry has no API."""
        path = self._path("referrers", descriptor.digest)
        query = f"?{urlencode({'artifactType': artifact_type})}" if artifact_type else ""
        found: list[Descriptor] = []
        url: str | None = path + query
        what = f"list referrers of {self._name(descriptor.digest)}"
        for _ in range(_REFERRERS_PAGES):
            if url is None:
                break
            response = await self.client.request(
                "GET", url, scopes=self._scopes, headers=[("Accept", mediatype.OCI_INDEX)]
            )
            if response.status == 404 and not found:
                await response.aclose()
                return await self._referrers_from_tag(descriptor, artifact_type)
            await self.client.expect(response, (200,), what)
            filtered = "artifacttype" in (response.headers.get("oci-filters-applied") or "").lower()
            index = _decode_index(await response.read(MAX_MANIFEST_SIZE), what)
            found += [
                d
                for d in index.manifests
                if filtered or not artifact_type or d.artifact_type == artifact_type
            ]
            link = _LINK_NEXT.search(response.headers.get("link") or "")
            url = link.group(1) if link else None
        return found

    async def _referrers_from_tag(
        self, descriptor: Descriptor, artifact_type: str | None
    ) -> list[Descriptor]:
        tag = referrers_tag(descriptor.digest)
        response = await self.client.request(
            "GET",
            self._path("manifests", tag),
            scopes=self._scopes,
            headers=[("Accept", mediatype.OCI_INDEX)],
        )
        if response.status == 404:
            await response.aclose()
            return []
        await self.client.expect(response, (200,), f"fetch referrers tag {self._name(tag)}")
        if bare_media_type(response.headers.get("content-type")) != mediatype.OCI_INDEX:
            await response.aclose()
            return []  # the spec: anything but an index there means no referrers
        try:
            index = _decode_index(await response.read(MAX_MANIFEST_SIZE), tag)
        except TransportError:
            return []
        return [d for d in index.manifests if not artifact_type or d.artifact_type == artifact_type]

    async def tags(self) -> list[str]:
        """Every tag of the repository, following pagination."""
        tags: list[str] = []
        url: str | None = f"/v2/{self.repository}/tags/list"
        while url is not None:
            response = await self.client.request("GET", url, scopes=self._scopes)
            await self.client.expect(response, (200,), f"list tags of {self.reference.name}")
            try:
                data = json.loads(await response.read(MAX_MANIFEST_SIZE))
                tags += [str(tag) for tag in data.get("tags") or []]
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, AttributeError, TypeError):
                raise TransportError(
                    f"list tags of {self.reference.name}: the answer is not the expected JSON"
                ) from None
            link = _LINK_NEXT.search(response.headers.get("link") or "")
            url = link.group(1) if link else None
        return tags


def _check_digest(actual: Digest, expected: str, where: str) -> None:
    if actual != expected:
        raise VerificationError(f"{where}: the registry sent content whose digest is {actual}")


def _bytes_to_skip(status: int, content_range: str | None, position: int, where: str) -> int:
    """How much of the body precedes ``position``: all of it up to there when the registry
    ignored ``Range`` (200), none when it honoured it (206 starting at ``position``)."""
    if status == 200:
        return position
    start = (content_range or "").removeprefix("bytes ").partition("-")[0].strip()
    if start != str(position):
        raise TransportError(f"{where}: asked for bytes from {position}, got the range {content_range!r}")
    return 0


def _decode_index(raw: bytes, what: str) -> ImageIndex:
    try:
        return msgspec.json.decode(raw, type=ImageIndex)
    except msgspec.DecodeError as exc:
        raise TransportError(f"{what}: not a valid image index ({exc})") from None
