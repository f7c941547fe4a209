"""The copy engine: one image from any :class:`ImageSource` to any :class:`ImageDestination`.

What it guarantees, whatever the transports:

- **Byte for byte.** Manifests and indexes are forwarded as the exact bytes fetched, never
  re-serialised, so every digest survives the copy.
- **Verified.** Each document is checked against its descriptor (size, digest, JSON, and a
  ``mediaType`` that agrees with the descriptor) before anything that depends on it is
  written; each blob is verified by the destination before it becomes visible. A lying
  source produces an error and no reference at the destination.
- **Children first.** Blobs before the manifest that lists them, manifests before the index
  that lists them, the root last; a tag never points at something incomplete.
- **Bounded parallelism.** At most ``concurrency`` blob transfers at a time; a blob shared
  by several manifests is transferred once; blobs the destination has are skipped.

Platforms: by default every manifest of an index is copied and the destination receives the
index itself. With ``platform`` only the matching child manifest is copied and it becomes the
root at the destination (the index's digest cannot be kept without all its children), which
is what ``skopeo copy`` does for a single platform.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Literal

import msgspec

from ..spec import Descriptor, ImageIndex, ImageManifest, Platform
from ..spec import mediatype as mt
from ..spec.digest import digest_error, verify_bytes
from .transport import (
    BlobFileDestination,
    BlobFileSource,
    BlobLost,
    ImageDestination,
    ImageSource,
    MountsBlobs,
    NotFound,
    TransportError,
    UntaggedRoots,
)

__all__ = ["CopyError", "CopyEvent", "CopyResult", "ProgressCallback", "copy_image", "parse_document"]

DEFAULT_CONCURRENCY: Final = 4
#: How often a blob is sent when the destination keeps losing it part-way (BlobLost).
_BLOB_ATTEMPTS: Final = 3
EventKind = Literal["blob-start", "blob-progress", "blob-done", "blob-skipped", "manifest"]


class CopyError(TransportError):
    """The source offered something that cannot be copied as it is (bad JSON, a media type
    conflict, no such platform); the message says which document and why."""


class CopyEvent(msgspec.Struct, frozen=True):
    """A step of a copy, for progress bars and JSON-lines output.

    ``done`` is the bytes transferred so far for ``blob-progress`` and the full size for
    ``blob-done``; ``blob-skipped`` means the destination already had it (or mounted it).
    """

    kind: EventKind
    digest: str
    media_type: str
    size: int
    done: int = 0


ProgressCallback = Callable[[CopyEvent], None]


class CopyResult(msgspec.Struct):
    """What the destination received: ``descriptor`` is its root (the index, or the chosen
    platform's manifest)."""

    descriptor: Descriptor
    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    referrers: int = 0


def parse_document(descriptor: Descriptor, raw: bytes, where: str = "") -> dict[str, Any]:
    """Check a fetched manifest or index against its descriptor and return it decoded.

    Raises ``VerificationError`` for a size or digest mismatch and :class:`CopyError` for bytes
    that are not JSON, a document whose own ``mediaType`` contradicts the descriptor's, or one
    that lacks the fields of its kind.
    """
    name = f"{where}{descriptor.digest}"
    try:
        verify_bytes(raw, descriptor.digest, descriptor.size)
    except ValueError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    try:
        node = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise CopyError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(node, dict):
        raise CopyError(f"{name} is not a JSON object")
    own = node.get("mediaType")
    if own is not None and own != descriptor.media_type:
        raise CopyError(
            f"{name}: media type conflict: the descriptor says {descriptor.media_type!r}, "
            f"the document says {own!r}"
        )
    kind: type[ImageManifest] | type[ImageIndex] | None = None
    if descriptor.media_type in mt.INDEX_TYPES:
        kind = ImageIndex
    elif descriptor.media_type in mt.MANIFEST_TYPES:
        kind = ImageManifest
    if kind is not None:
        try:
            msgspec.convert(node, kind)
        except msgspec.ValidationError as exc:
            raise CopyError(f"{name} is not a valid {descriptor.media_type}: {exc}") from None
    return node


def _kind(descriptor: Descriptor, node: dict[str, Any]) -> Literal["index", "manifest"]:
    """Index or manifest, by media type, or by shape for media types we do not know."""
    if descriptor.media_type in mt.INDEX_TYPES:
        return "index"
    if descriptor.media_type in mt.MANIFEST_TYPES:
        return "manifest"
    if isinstance(node.get("manifests"), list):
        return "index"
    if isinstance(node.get("config"), dict) or isinstance(node.get("layers"), list):
        return "manifest"
    raise CopyError(f"{descriptor.digest}: {descriptor.media_type} is neither a manifest nor an index")


def _descriptors(node: dict[str, Any], key: str) -> list[Descriptor]:
    items = node.get(key)
    if not isinstance(items, list):
        return []
    try:
        descriptors = [msgspec.convert(item, Descriptor) for item in items]
    except msgspec.ValidationError as exc:
        raise CopyError(f"$.{key}: {exc}") from None
    for index, descriptor in enumerate(descriptors):
        # Security decision: a digest goes into URLs and paths; a hostile document's
        # "sha256:/../../v2/other/manifests/x" must never reach a request.
        problem = digest_error(descriptor.digest) or ("a negative size" if descriptor.size < 0 else None)
        if problem:
            raise CopyError(f"$.{key}[{index}]: {problem}")
    return descriptors


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group (the others are usually its cancellations)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _unwrap(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


class _Copier:
    def __init__(
        self,
        source: ImageSource,
        destination: ImageDestination,
        *,
        with_referrers: bool,
        concurrency: int,
        progress: ProgressCallback | None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.with_referrers = with_referrers
        self.semaphore = asyncio.Semaphore(max(1, concurrency))
        self.progress = progress or (lambda _: None)
        self.blobs: dict[str, asyncio.Task[None]] = {}
        self.documents: dict[str, asyncio.Task[None]] = {}
        self.group: asyncio.TaskGroup | None = None
        self.result = CopyResult(descriptor=Descriptor(media_type="", digest="", size=0))

    async def fetch(self, descriptor: Descriptor) -> tuple[bytes, dict[str, Any]]:
        raw = await self.source.fetch_manifest(descriptor)
        return raw, parse_document(descriptor, raw)

    def spawn_document(self, descriptor: Descriptor) -> asyncio.Task[None]:
        task = self.documents.get(descriptor.digest)
        if task is None:
            assert self.group is not None
            task = self.group.create_task(self.copy_fetched(descriptor))
            self.documents[descriptor.digest] = task
        return task

    async def copy_fetched(self, descriptor: Descriptor) -> None:
        async with self.semaphore:  # held only while fetching: children wait on it too
            raw, node = await self.fetch(descriptor)
        await self.copy_document(descriptor, raw, node, [])

    async def copy_document(
        self, descriptor: Descriptor, raw: bytes, node: dict[str, Any], tags: Sequence[str]
    ) -> None:
        if _kind(descriptor, node) == "index":
            children = _descriptors(node, "manifests")
            await asyncio.gather(*(self.spawn_document(child) for child in children))
        else:
            config = node.get("config")
            blobs = _descriptors(node, "layers")
            if isinstance(config, dict):
                blobs += _descriptors({"config": [config]}, "config")
            await asyncio.gather(*(self.spawn_blob(blob) for blob in blobs))
        await self.destination.put_manifest(descriptor, raw, list(tags))
        self.result.manifests += 1
        self.progress(CopyEvent("manifest", descriptor.digest, descriptor.media_type, descriptor.size))
        if self.with_referrers:
            await self.copy_referrers(descriptor)

    async def copy_referrers(self, subject: Descriptor) -> None:
        """Referrers after their subject, so a destination that checks subjects finds it."""
        found = [r for r in await self.source.referrers(subject) if r.digest not in self.documents]
        self.result.referrers += len(found)
        for referrer in found:
            plain = Descriptor(media_type=referrer.media_type, digest=referrer.digest, size=referrer.size)
            self.spawn_document(plain)

    def spawn_blob(self, descriptor: Descriptor) -> asyncio.Task[None]:
        task = self.blobs.get(descriptor.digest)
        if task is None:
            assert self.group is not None
            task = self.group.create_task(self.transfer(descriptor))
            self.blobs[descriptor.digest] = task
        return task

    async def transfer(self, descriptor: Descriptor) -> None:
        async with self.semaphore:
            event = CopyEvent("blob-skipped", descriptor.digest, descriptor.media_type, descriptor.size)
            # A mount first: where the destination knows a repository to mount from, that one
            # request settles it; where it knows none, mount_blob sends nothing.
            if (
                isinstance(self.destination, MountsBlobs)
                and await self.destination.mount_blob(descriptor, self.source)
            ) or await self.destination.has_blob(descriptor):
                self.result.blobs_skipped += 1
                self.progress(event)
                return
            self.progress(CopyEvent("blob-start", descriptor.digest, descriptor.media_type, descriptor.size))
            try:
                await self._put_again_if_lost(descriptor)
            except NotFound:
                if descriptor.media_type in mt.NONDISTRIBUTABLE_LAYER_TYPES or descriptor.urls:
                    self.progress(event)  # may legitimately live elsewhere (its urls)
                    return
                raise
            self.result.blobs_copied += 1
            self.result.bytes_copied += descriptor.size
            size = descriptor.size
            self.progress(CopyEvent("blob-done", descriptor.digest, descriptor.media_type, size, size))

    async def _put_again_if_lost(self, descriptor: Descriptor) -> None:
        """A destination that lost a partial blob (a registry dropping a broken upload) gets
        the blob again from its start, a few times, since the source still has it."""
        for attempt in range(1, _BLOB_ATTEMPTS + 1):
            try:
                await self._put(descriptor)
                return
            except BlobLost:
                if attempt == _BLOB_ATTEMPTS:
                    raise

    async def _put(self, descriptor: Descriptor) -> None:
        if isinstance(self.source, BlobFileSource) and isinstance(self.destination, BlobFileDestination):
            blob = self.source.blob_file(descriptor)
            if blob is not None:
                with blob:
                    await self.destination.put_blob_from_file(descriptor, blob)
                return
        await self.destination.put_blob(descriptor, self._counted(descriptor))

    async def _counted(self, descriptor: Descriptor) -> AsyncIterator[bytes]:
        done = 0
        async for chunk in self.source.open_blob(descriptor):
            done += len(chunk)
            self.progress(
                CopyEvent("blob-progress", descriptor.digest, descriptor.media_type, descriptor.size, done)
            )
            yield chunk


def _choose_platform(node: dict[str, Any], wanted: Platform, where: str) -> Descriptor:
    children = _descriptors(node, "manifests")
    for child in children:
        if child.platform is not None and child.platform.matches(wanted):
            return child
    offered = ", ".join(str(c.platform) for c in children if c.platform is not None) or "none"
    raise CopyError(f"{where} has no manifest for {wanted} (it offers: {offered})")


async def copy_image(
    source: ImageSource,
    destination: ImageDestination,
    reference: str | None = None,
    *,
    tags: Sequence[str] = (),
    platform: Platform | None = None,
    with_referrers: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ProgressCallback | None = None,
) -> CopyResult:
    """Copy the image ``reference`` names at ``source`` to ``destination`` under ``tags``.

    Without tags, a destination that needs it (an image layout) records the image untagged.
    The destination is committed on success; on failure it is left without any new reference
    and the error (``VerificationError``, :class:`CopyError`, ``NotFound``…) propagates.
    """
    copier = _Copier(
        source, destination, with_referrers=with_referrers, concurrency=concurrency, progress=progress
    )
    root = await source.resolve(reference)
    root = Descriptor(media_type=root.media_type, digest=root.digest, size=root.size)
    raw, node = await copier.fetch(root)
    if platform is not None and _kind(root, node) == "index":
        root = _choose_platform(node, platform, reference or "the image")
        root = Descriptor(media_type=root.media_type, digest=root.digest, size=root.size)
        raw, node = await copier.fetch(root)
    try:
        async with asyncio.TaskGroup() as group:
            copier.group = group
            copier.documents[root.digest] = group.create_task(copier.copy_document(root, raw, node, tags))
    except BaseExceptionGroup as group_error:
        raise _unwrap(group_error) from None
    if not tags and isinstance(destination, UntaggedRoots):
        await destination.add_root(root)
    await destination.commit()
    copier.result.descriptor = root
    return copier.result
