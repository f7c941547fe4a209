"""The two narrow interfaces through which the registry reaches storage.

A new backend is one module implementing one of these protocols plus one test fixture; the
shared backend suite (``tests/test_storage_backends.py``) then runs against it, and the HTTP
layer never learns which backend it talks to.

The split follows what replicas must agree on:

- :class:`BlobStore` holds bytes only: immutable content addressed by digest, and the staging
  area of uploads in progress. It coordinates nothing. Where a staged upload has state that a
  later request (possibly on another replica) needs — a multipart upload id, its parts — the
  store returns it as an opaque ``stage`` value that the caller keeps in the metadata store.
- :class:`MetadataStore` holds everything else, and everything that needs agreement between
  replicas: repositories, manifests, tags, blob links, upload sessions with their offsets and
  digest state, the announcement that a blob is being published (which garbage collection
  respects), blobs being deleted, and leases (the housekeeping leader). Each method that
  changes several rows is one transaction. No backend uses a local file lock or an
  in-process cache that another replica could make stale.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from ...spec.digest import Digest

__all__ = [
    "BlobInfo",
    "BlobStore",
    "DeleteOutcome",
    "GCReport",
    "ManifestRecord",
    "MetadataStore",
    "Referrer",
    "SchemaError",
    "StorageUnavailable",
    "UploadRecord",
]


class StorageUnavailable(RuntimeError):
    """A backend cannot be reached right now (database restarting, object store down).

    The registry answers 503 with this message and carries on; the next request tries again.
    """

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"{component} is unavailable: {reason}")
        self.component = component


class SchemaError(RuntimeError):
    """The metadata database has a schema this version does not know: migrate (or upgrade)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    size: int
    #: When the bytes were stored (seconds since the epoch): GC spares younger blobs.
    modified: float


class BlobStore(Protocol):
    """Immutable content addressed by digest, plus the staging of uploads in progress.

    A blob becomes visible only once complete: published from a staged upload whose digest the
    caller has verified. A crash at any moment leaves no blob or the whole blob.
    """

    async def open(self) -> None:
        """Connect and check access; raise :class:`StorageUnavailable` with a one-line reason."""
        ...

    async def close(self) -> None: ...

    # content ---------------------------------------------------------------------------
    async def stat(self, digest: Digest) -> BlobInfo | None:
        """Size and time of a stored blob, or None when it is not stored."""
        ...

    def local_path(self, digest: Digest) -> str | None:
        """A filesystem path for zero-copy sending, when the backend is local."""
        ...

    async def url(self, digest: Digest, *, expires: float) -> str | None:
        """A URL valid for ``expires`` seconds from which a client may fetch the blob itself
        (a presigned object-store URL), or None when the backend has no such URLs."""
        ...

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset``, ``length`` of them (all when None), in constant
        memory whatever the blob's size."""
        ...

    async def delete(self, digest: Digest) -> None:
        """Remove a blob's bytes; removing an absent blob is not an error."""
        ...

    def digests(self) -> AsyncIterator[tuple[Digest, BlobInfo]]:
        """Every stored blob (garbage collection finds bytes that no record names)."""
        ...

    # staging ---------------------------------------------------------------------------
    # ``stage_append``, ``stage_read`` and ``stage_commit`` raise FileNotFoundError when the
    # upload's staging area is gone (purged, or published by a request that crashed before
    # the session was closed): the upload cannot go on and the client starts it again.

    async def stage_create(self, upload_id: str) -> bytes:
        """Prepare the staging of a new upload; the initial ``stage`` value."""
        ...

    async def stage_append(
        self,
        upload_id: str,
        stage: bytes,
        offset: int,
        chunks: AsyncIterator[bytes],
        destination: Digest | None = None,
    ) -> tuple[int, bytes]:
        """Stage ``chunks`` after the first ``offset`` bytes; (bytes written, new ``stage``).

        ``offset`` and ``stage`` are what the metadata store recorded for the session: anything
        staged past ``offset`` is left over from an attempt that never completed and is
        overwritten or ignored. Raising leaves the recorded session valid as it was (the failed
        chunk is simply not part of the upload). The caller holds the session's lease, so no
        other request appends to the same upload meanwhile.

        ``destination``, given only for the whole blob in one request (``offset`` 0) whose
        digest the caller computes on the way, is the digest it will commit the stage as: a
        store without a rename (S3) may then write the bytes straight to that blob's place,
        invisibly until :meth:`stage_commit`. Such a stage need not support :meth:`stage_read`
        or a further append; :meth:`stage_abort` with it releases what it holds.
        """
        ...

    def stage_read(self, upload_id: str, stage: bytes, size: int) -> AsyncIterator[bytes]:
        """The first ``size`` staged bytes (to hash them when no digest state was carried)."""
        ...

    async def stage_commit(self, upload_id: str, stage: bytes, size: int, digest: Digest) -> None:
        """Publish the first ``size`` staged bytes as blob ``digest``, which the caller has
        verified; durable when this returns. Publishing a digest that is already stored is
        allowed (the content is the same). The staging area is released."""
        ...

    async def stage_abort(self, upload_id: str, stage: bytes | None) -> None:
        """Release a staged upload's space; ``stage`` is None when the session record is lost."""
        ...

    def staged(self) -> AsyncIterator[tuple[str, float]]:
        """Every staged upload id with the time it last changed (purging finds strays)."""
        ...


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
    """An upload session as every replica sees it."""

    id: str
    repository: str
    #: The client address that opened it (for the per-address cap).
    client: str
    #: Bytes accepted so far: the truth, whatever the staging area holds beyond it.
    size: int
    #: The resumable digest state after ``size`` bytes (``spec.digest.ResumableDigester``),
    #: empty when none could be carried (the commit then hashes the staged bytes).
    hash_state: bytes
    #: The blob store's opaque staging state.
    stage: bytes
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    """What a delete did: ``deleted``, or why not: the manifests that still reference the
    target (``referenced_by`` non-empty), or nothing found (both empty/false)."""

    deleted: bool
    referenced_by: list[Digest] = field(default_factory=list)


@dataclass
class GCReport:
    """What a garbage collection removed (or, on a dry run, would remove)."""

    manifests: list[tuple[str, Digest]] = field(default_factory=list)
    blob_links: list[tuple[str, Digest]] = field(default_factory=list)
    blobs: list[Digest] = field(default_factory=list)
    repositories: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    freed_bytes: int = 0


class MetadataStore(Protocol):
    """Repositories, manifests, tags, blob links, referrers, upload sessions and the
    coordination between replicas.

    Every method that changes several rows does so atomically: a crash leaves either the old
    state or the new one. Raise :class:`StorageUnavailable` when the database cannot be reached.
    """

    async def open(self) -> None:
        """Connect. An empty database gets the current schema; one at an older version raises
        :class:`SchemaError` naming ``ocikit migrate``; one at a newer version raises too."""
        ...

    async def close(self) -> None: ...

    async def migrate(self) -> tuple[int, int]:
        """Apply pending schema migrations; (version before, version after)."""
        ...

    # repositories and blobs -----------------------------------------------------------
    async def repository_exists(self, repository: str) -> bool: ...

    async def repositories(self, limit: int, last: str | None) -> list[str]:
        """Repository names in byte order after ``last`` (an indexed, paginated query)."""
        ...

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None:
        """The size of a blob if it belongs to ``repository``."""
        ...

    async def blob_repositories(self, digest: Digest) -> list[str]:
        """Repositories holding a blob (for mounts that name no source)."""
        ...

    async def blob_is_recorded(self, digest: Digest) -> bool: ...

    async def link_blob(self, repository: str, digest: Digest, size: int, *, announced_by: str) -> bool:
        """Record a blob (creating the repository) and stamp it as just pushed, once its bytes
        are published under the :meth:`publish_begin` announcement of ``announced_by``.

        False, and nothing changes, when that announcement is gone or the digest is being
        deleted: a collection has entered the digest as being deleted since the announcement
        was made (it had expired while its publisher stalled), so the bytes just published may
        be gone. Linking them anyway would record a blob with no bytes; the publisher fails
        instead, and the client pushes again once the deletion is done."""
        ...

    async def unlink_blob(self, repository: str, digest: Digest, *, refuse_if_used: bool) -> DeleteOutcome:
        """Remove a blob from a repository; with ``refuse_if_used``, not while a manifest of
        the repository references it (those manifests are returned)."""
        ...

    # manifests and tags ---------------------------------------------------------------
    async def manifest(self, repository: str, digest: Digest) -> ManifestRecord | None: ...

    async def manifest_digests(self, repository: str, limit: int, last: str | None) -> list[Digest]:
        """The repository's manifests in byte order after ``last`` (integrity checks)."""
        ...

    async def tag_target(self, repository: str, tag: str) -> Digest | None: ...

    async def tagged_manifest(self, repository: str, tag: str) -> ManifestRecord | None:
        """The manifest ``tag`` points to, in one read: a pull by tag asks for nothing else."""
        ...

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
        manifests) stored in it; the missing ones are returned and nothing is stored — not even
        the repository. With ``sparse`` they may be absent: the references are recorded all the
        same, so content pushed later is kept alive by this manifest.
        """
        ...

    async def delete_manifest(
        self, repository: str, digest: Digest, *, refuse_if_listed: bool
    ) -> DeleteOutcome:
        """Delete a manifest and every tag pointing at it; with ``refuse_if_listed``, not while
        an index of the repository lists it (those indexes are returned)."""
        ...

    async def delete_tag(self, repository: str, tag: str) -> bool: ...

    async def tags(self, repository: str, limit: int, last: str | None) -> list[str] | None:
        """Tags in byte order after ``last``; None when the repository does not exist."""
        ...

    async def referrers(
        self, repository: str, subject: Digest, artifact_type: str | None, limit: int, last: str | None
    ) -> list[Referrer]: ...

    # upload sessions ------------------------------------------------------------------
    async def upload_create(self, record: UploadRecord, *, per_repository: int, per_client: int) -> bool:
        """Record a new session, unless the repository already has ``per_repository`` open
        sessions or the client address ``per_client`` (0: no cap); False when refused."""
        ...

    async def upload(self, upload_id: str) -> UploadRecord | None: ...

    async def upload_claim(self, upload_id: str, holder: str, ttl: float) -> UploadRecord | None:
        """Take the session's write lease for ``ttl`` seconds and return the session as it is
        now; None while another holder's lease is live or when there is no such session.
        Renewing one's own lease is a claim by the same holder."""
        ...

    async def upload_advance(
        self, upload_id: str, holder: str, *, size: int, hash_state: bytes, stage: bytes
    ) -> bool:
        """Record appended bytes and release the lease; False when ``holder`` no longer holds
        it (the lease expired and another request took the session: the bytes do not count)."""
        ...

    async def upload_release(self, upload_id: str, holder: str) -> None:
        """Give the lease back without changing the session (a chunk that failed)."""
        ...

    async def upload_delete(self, upload_id: str) -> None: ...

    async def uploads_older_than(self, timestamp: float) -> list[UploadRecord]: ...

    # push-vs-sweep coordination -------------------------------------------------------
    async def publish_begin(self, digest: Digest, holder: str, ttl: float) -> bool:
        """Announce that ``digest``'s bytes are about to be published and recorded; garbage
        collection leaves announced digests alone for ``ttl`` seconds (by the database's clock),
        after which it may collect the digest and remove the announcement. False while a
        collection is deleting that digest's bytes: wait and try again (the bytes must be
        published after they are gone)."""
        ...

    async def publish_end(self, digest: Digest, holder: str) -> None: ...

    # garbage collection ---------------------------------------------------------------
    async def collect_garbage(self, older_than: float, dry_run: bool) -> GCReport:
        """Mark and sweep the records, atomically: unreferenced untagged manifests, blob links
        and repositories left empty, all older than ``older_than``.

        ``report.blobs`` lists blobs no repository holds any more and that no publisher has
        announced: their records are removed and they are entered as *being deleted*, so that
        :meth:`publish_begin` waits until the caller has removed their bytes and called
        :meth:`blob_deleted`. Their expired announcements are removed (see :meth:`link_blob`).
        """
        ...

    async def blob_delete_begin(self, digest: Digest) -> bool:
        """Enter bytes that the blob store holds but no record names (a publisher that crashed
        before recording them) as being deleted, as :meth:`collect_garbage` does for the blobs
        it sweeps; False, and nothing changes, when the digest is recorded or announced.

        (Added to the contract while implementing it: without it, deleting such strays could
        race a push that publishes the same digest.)"""
        ...

    async def blobs_being_deleted(self) -> list[Digest]:
        """Deletions a collection started and did not finish (it crashed): finish them."""
        ...

    async def blob_delete_fence(self, digest: Digest, lease: str, holder: str, ttl: float) -> bool:
        """Before deleting the bytes of a blob being deleted: renew (or take, when expired) the
        lease ``lease`` for ``holder`` for ``ttl`` seconds, and check that ``digest`` is still
        being deleted; True when both hold.

        The bytes may then be deleted, within ``ttl`` seconds: meanwhile nobody else holds the
        lease, and pushes of the digest wait (:meth:`publish_begin`). A caller working from a
        list read earlier learns here that another holder has finished the deletion, after
        which the digest may have been pushed again: deleting its bytes then would lose them.
        False when either does not hold (:meth:`lease_acquire` tells which)."""
        ...

    async def blob_deleted(self, digest: Digest, lease: str, holder: str) -> bool:
        """The bytes of ``digest`` are gone: pushes of it may go on. Only while ``holder``
        still holds ``lease`` (False otherwise, and nothing changes): a holder that lost the
        lease may have deleted late, and the new holder deletes the bytes again before it
        lets pushes through."""
        ...

    # leases -------------------------------------------------------------------------
    async def lease_acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Hold the named lease (e.g. the housekeeping leader) for ``ttl`` seconds by the
        database's clock (replicas' clocks may disagree); True when ``holder`` has it now
        (renewing its own lease is an acquire)."""
        ...

    async def lease_release(self, name: str, holder: str) -> None: ...
