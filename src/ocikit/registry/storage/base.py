"""The two narrow interfaces through which the registry reaches storage.

A new backend (S3, PostgreSQL) is one module implementing one of these protocols; the HTTP
layer never learns which backend it talks to. Both are async so that a network backend fits
without change, and both are deliberately small: every method is one storage operation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ...spec.digest import Digest

__all__ = [
    "BlobStore",
    "GCReport",
    "ManifestRecord",
    "MetadataStore",
    "Referrer",
    "UploadRecord",
]


class BlobStore(Protocol):
    """Content-addressed bytes plus staging areas for uploads in progress.

    A blob becomes visible only once complete and verified; an upload is invisible until then.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def size(self, digest: Digest) -> int | None:
        """The stored size, or None when the blob is not stored."""
        ...

    async def modified(self, digest: Digest) -> float | None:
        """When the blob was stored (seconds since the epoch), or None when it is not: garbage
        collection spares blobs younger than its grace period."""
        ...

    def local_path(self, digest: Digest) -> str | None:
        """A filesystem path for zero-copy sending, when the backend is local."""
        ...

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset``, ``length`` of them (all when None)."""
        ...

    async def delete(self, digest: Digest) -> None: ...

    def digests(self) -> AsyncIterator[Digest]:
        """Every stored blob (for garbage collection and integrity checks)."""
        ...

    async def upload_create(self, upload_id: str) -> None: ...

    async def upload_size(self, upload_id: str) -> int | None:
        """Bytes received so far, or None when no such upload is staged."""
        ...

    async def upload_append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes]) -> int:
        """Append ``chunks`` at ``offset`` (which must be the current size); the new size.

        When the body ends early the partial data stays (a resumable upload). Raises
        :class:`UploadOffsetError` when ``offset`` is not the current size.
        """
        ...

    async def upload_modified(self, upload_id: str) -> float | None:
        """When the staged upload last received bytes, or None when no such upload is staged."""
        ...

    async def upload_truncate(self, upload_id: str, size: int) -> None:
        """Drop bytes past ``size`` (undoing a chunk that was refused)."""
        ...

    async def upload_commit(self, upload_id: str, digest: Digest) -> int:
        """Verify the staged bytes against ``digest`` and publish them as that blob.

        Returns the size. Raises ``VerificationError`` (the upload is then discarded).
        """
        ...

    async def upload_abort(self, upload_id: str) -> None: ...

    def upload_ids(self) -> AsyncIterator[str]: ...

    def publishing(self) -> AbstractAsyncContextManager[None]:
        """Held (shared) while an upload is recorded and published, so a sweep cannot
        delete a blob between a re-upload's record and its bytes landing."""
        ...

    def sweeping(self) -> AbstractAsyncContextManager[None]:
        """Held (exclusive) by garbage collection while it decides and deletes."""
        ...


class UploadOffsetError(ValueError):
    """A chunk did not start where the upload ends."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"the upload has {expected} bytes; a chunk must start there")
        self.expected = expected


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A stored manifest: the exact bytes pushed plus what queries need without parsing them."""

    digest: Digest
    media_type: str
    content: bytes
    artifact_type: str | None = None
    subject: Digest | None = None
    annotations: dict[str, str] | None = None
    #: For referrers of an image manifest with no artifactType: its config's mediaType.
    config_media_type: str | None = None

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True, slots=True)
class Referrer:
    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repository: str
    created_at: float
    updated_at: float


@dataclass
class GCReport:
    """What a garbage collection removed (or, on a dry run, would remove)."""

    manifests: list[tuple[str, Digest]] = field(default_factory=list)
    blob_links: list[tuple[str, Digest]] = field(default_factory=list)
    blobs: list[Digest] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    freed_bytes: int = 0


class MetadataStore(Protocol):
    """Repositories, manifests, tags, blob links, referrers and upload sessions.

    Every method that changes several rows does so atomically: a crash leaves either the old
    state or the new one.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # repositories and blobs -----------------------------------------------------------
    async def repository_exists(self, repository: str) -> bool: ...

    async def repositories(self, limit: int, last: str | None) -> list[str]: ...

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None:
        """The size of a blob if it belongs to ``repository``."""
        ...

    async def blob_repositories(self, digest: Digest) -> list[str]:
        """Repositories holding a blob (for mounts that name no source)."""
        ...

    async def link_blob(self, repository: str, digest: Digest, size: int) -> None:
        """Record a blob (creating the repository) and stamp it as just pushed."""
        ...

    async def unlink_blob(self, repository: str, digest: Digest) -> bool: ...

    # manifests and tags ---------------------------------------------------------------
    async def manifest(self, repository: str, digest: Digest) -> ManifestRecord | None: ...

    async def tag_target(self, repository: str, tag: str) -> Digest | None: ...

    async def put_manifest(
        self,
        repository: str,
        record: ManifestRecord,
        *,
        blobs: list[Digest],
        children: list[Digest],
        tags: list[str],
        sparse: bool = False,
    ) -> list[Digest]:
        """Store a manifest and point ``tags`` at it, atomically.

        ``blobs`` (config, layers) must be linked to the repository and ``children`` (an index's
        manifests) stored in it; the missing ones are returned and nothing is stored. With
        ``sparse`` they may be absent: the references are recorded all the same, so content
        pushed later is kept alive by this manifest.
        """
        ...

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        """Delete a manifest and every tag pointing at it."""
        ...

    async def delete_tag(self, repository: str, tag: str) -> bool: ...

    async def tags(self, repository: str, limit: int, last: str | None) -> list[str] | None:
        """Tags in byte order after ``last``; None when the repository does not exist."""
        ...

    async def referrers(
        self, repository: str, subject: Digest, artifact_type: str | None, limit: int, last: str | None
    ) -> list[Referrer]: ...

    # uploads ----------------------------------------------------------------------------
    async def upload_create(self, upload_id: str, repository: str) -> None: ...

    async def upload(self, upload_id: str) -> UploadRecord | None: ...

    async def upload_touch(self, upload_id: str) -> None: ...

    async def upload_delete(self, upload_id: str) -> None: ...

    async def uploads_older_than(self, timestamp: float) -> list[UploadRecord]: ...

    # garbage collection -----------------------------------------------------------------
    async def collect_garbage(self, older_than: float, dry_run: bool) -> GCReport:
        """Delete unreferenced untagged manifests and blob links older than ``older_than``.

        ``report.blobs`` lists blobs no repository holds any more; their rows are removed in
        the same transaction, and the caller then removes their bytes.
        """
        ...

    async def blob_is_recorded(self, digest: Digest) -> bool: ...
