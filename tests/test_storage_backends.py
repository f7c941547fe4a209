"""The storage backend suite: every BlobStore and every MetadataStore implementation runs the
same tests against ``registry/storage/base.py``'s contract (as distribution's storage driver
suite does). A new backend is one module plus one entry in BLOB_STORES or METADATA_STORES.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ocikit.registry.storage.base import (
    BlobStore,
    DeleteOutcome,
    ManifestRecord,
    MetadataStore,
    SchemaError,
    UploadRecord,
)
from ocikit.registry.storage.filesystem import FilesystemBlobStore
from ocikit.registry.storage.schema import CURRENT_VERSION, MIGRATIONS, statements
from ocikit.registry.storage.sqlite import SQLiteMetadataStore
from ocikit.spec.digest import Digest, digest_of
from seaweedfs import seaweedfs_fixture  # noqa: F401  (the seaweedfs fixture of the s3 backend)

T = TypeVar("T")
S = TypeVar("S", BlobStore, MetadataStore)


# ---------------------------------------------------------------------- the backends


@dataclass
class MetadataBackend:
    make: Callable[[], MetadataStore]
    #: Raw SQL on the same database, to build an old schema for the migration tests.
    execute: Callable[[list[str]], Coroutine[Any, Any, None]]
    dialect: str


def _filesystem(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], BlobStore]:
    return lambda: FilesystemBlobStore(tmp_path / "blobs")


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> MetadataBackend:
    path = tmp_path / "metadata.db"

    async def execute(sql: list[str]) -> None:
        with sqlite3.connect(path) as db:
            for statement in sql:
                db.execute(statement)

    return MetadataBackend(lambda: SQLiteMetadataStore(path), execute, "sqlite")


def _postgresql(tmp_path: Path, request: pytest.FixtureRequest) -> MetadataBackend:
    import asyncpg  # type: ignore[import-untyped]

    from ocikit.registry.storage.postgres import PostgresMetadataStore

    url = request.getfixturevalue("postgres").database()

    async def execute(sql: list[str]) -> None:
        connection = await asyncpg.connect(url)
        try:
            for statement in sql:
                await connection.execute(statement)
        finally:
            await connection.close()

    return MetadataBackend(lambda: PostgresMetadataStore(url), execute, "postgresql")


def _s3(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], BlobStore]:
    from ocikit.registry.storage.s3 import S3BlobStore

    server = request.getfixturevalue("seaweedfs")
    for name, value in server.environment().items():
        request.getfixturevalue("monkeypatch").setenv(name, value)
    bucket = server.new_bucket()
    return lambda: S3BlobStore(bucket, "registry", endpoint=server.endpoint, region=server.region)


#: Every blob store: name -> (tmp_path, request) -> a constructor of a fresh, unopened store.
BLOB_STORES: dict[str, Callable[[Path, pytest.FixtureRequest], Callable[[], BlobStore]]] = {
    "filesystem": _filesystem,
    "s3": _s3,
}
#: Every metadata store, likewise, with raw SQL access for the migration tests.
METADATA_STORES: dict[str, Callable[[Path, pytest.FixtureRequest], MetadataBackend]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


@pytest.fixture(params=sorted(BLOB_STORES))
def blob_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BlobStore]:
    return BLOB_STORES[request.param](tmp_path, request)


@pytest.fixture(params=sorted(METADATA_STORES))
def metadata_backend(request: pytest.FixtureRequest, tmp_path: Path) -> MetadataBackend:
    return METADATA_STORES[request.param](tmp_path, request)


def run_with(make: Callable[[], S], scenario: Callable[[S], Coroutine[Any, Any, T]]) -> T:
    """Open a store, run ``scenario`` on it, close it: all in one event loop."""

    async def main() -> T:
        store = make()
        await store.open()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def chunks_of(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def stage(store: BlobStore, upload_id: str, *pieces: bytes) -> tuple[int, bytes]:
    """Stage ``pieces`` as consecutive appends (one request each); (size, stage)."""
    state = await store.stage_create(upload_id)
    size = 0
    for piece in pieces:
        written, state = await store.stage_append(upload_id, state, size, chunks_of(piece))
        size += written
    return size, state


def upload_id() -> str:
    return os.urandom(16).hex()


# ---------------------------------------------------------------------- blob stores


def test_blob_round_trip(blob_backend: Callable[[], BlobStore]) -> None:
    data = os.urandom(300_000)
    digest = digest_of(data)

    async def scenario(store: BlobStore) -> None:
        assert await store.stat(digest) is None
        name = upload_id()
        size, state = await stage(store, name, data[:1000], data[1000:])
        assert size == len(data)
        assert await read_all(store.stage_read(name, state, size)) == data
        await store.stage_commit(name, state, size, digest)
        info = await store.stat(digest)
        assert info is not None
        assert info.size == len(data)
        assert info.modified <= time.time() + 1
        assert await read_all(store.read(digest)) == data
        assert await read_all(store.read(digest, 1000)) == data[1000:]
        assert await read_all(store.read(digest, 5, 10)) == data[5:15]
        assert digest in [d async for d, _ in store.digests()]
        assert name not in [n async for n, _ in store.staged()]  # the staging area is released
        path = store.local_path(digest)
        assert path is None or Path(path).read_bytes() == data
        url = await store.url(digest, expires=60)
        assert url is None or url.startswith("http")
        await store.delete(digest)
        await store.delete(digest)  # absent: not an error
        assert await store.stat(digest) is None
        assert digest not in [d async for d, _ in store.digests()]

    run_with(blob_backend, scenario)


def test_staging_at_the_recorded_offset_ignores_leftovers(blob_backend: Callable[[], BlobStore]) -> None:
    """A chunk that never counted (its request failed) left bytes past the recorded offset:
    the next append at that offset replaces them, and the commit publishes only ``size`` bytes."""
    kept, leftover, replacement = b"A" * 5000, b"L" * 7000, b"B" * 3000

    async def scenario(store: BlobStore) -> None:
        name = upload_id()
        size, state = await stage(store, name, kept)
        _, _ = await store.stage_append(name, state, size, chunks_of(leftover))  # not recorded
        written, state = await store.stage_append(name, state, size, chunks_of(replacement))
        size += written
        digest = digest_of(kept + replacement)
        assert await read_all(store.stage_read(name, state, size)) == kept + replacement
        await store.stage_commit(name, state, size, digest)
        assert await read_all(store.read(digest)) == kept + replacement
        info = await store.stat(digest)
        assert info is not None
        assert info.size == size

    run_with(blob_backend, scenario)


def test_a_failed_append_leaves_the_session_valid(blob_backend: Callable[[], BlobStore]) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * 100_000
        raise ConnectionError("client went away")

    async def scenario(store: BlobStore) -> None:
        name = upload_id()
        size, state = await stage(store, name, b"first")
        with pytest.raises(ConnectionError):
            await store.stage_append(name, state, size, failing())
        written, state = await store.stage_append(name, state, size, chunks_of(b"second"))
        await store.stage_commit(name, state, size + written, digest_of(b"firstsecond"))
        assert await read_all(store.read(digest_of(b"firstsecond"))) == b"firstsecond"

    run_with(blob_backend, scenario)


def test_many_small_chunks_and_large_ones(blob_backend: Callable[[], BlobStore]) -> None:
    """Clients send chunks of any size: hundreds of tiny ones, then one past 5 MiB (an object
    store's minimum part size)."""
    tiny = [os.urandom(997) for _ in range(300)]
    large = os.urandom(6 * 1024 * 1024 + 5)
    data = b"".join(tiny) + large

    async def scenario(store: BlobStore) -> None:
        name = upload_id()
        size, state = await stage(store, name, *tiny, large)
        assert size == len(data)
        await store.stage_commit(name, state, size, digest_of(data))
        assert (
            hashlib.sha256(await read_all(store.read(digest_of(data)))).digest()
            == hashlib.sha256(data).digest()
        )

    run_with(blob_backend, scenario)


def test_a_whole_blob_staged_for_its_destination(blob_backend: Callable[[], BlobStore]) -> None:
    """One request with the whole blob and its digest known (a monolithic upload): a store may
    write it straight to the blob's place, but nothing is visible before the commit, and an
    aborted or failed one leaves nothing at all; small and multi-part sizes alike."""
    small, large, lost = os.urandom(70_000), os.urandom(11 * 1024 * 1024 + 3), os.urandom(6 * 1024 * 1024)

    async def failing() -> AsyncIterator[bytes]:
        yield lost
        raise ConnectionError("client went away")

    async def scenario(store: BlobStore) -> None:
        for data in (small, large):
            name, digest = upload_id(), digest_of(data)
            state = await store.stage_create(name)
            written, state = await store.stage_append(
                name, state, 0, chunks_of(data[:999], data[999:]), digest
            )
            assert written == len(data)
            assert await store.stat(digest) is None
            await store.stage_commit(name, state, written, digest)
            assert await read_all(store.read(digest)) == data
            assert name not in [n async for n, _ in store.staged()]
        name, digest = upload_id(), digest_of(lost)
        state = await store.stage_create(name)
        with pytest.raises(ConnectionError):
            await store.stage_append(name, state, 0, failing(), digest)
        aborted = upload_id()
        begun = await store.stage_create(aborted)
        written, staged = await store.stage_append(aborted, begun, 0, chunks_of(lost), digest)
        await store.stage_abort(aborted, staged)
        await store.stage_abort(name, state)
        assert await store.stat(digest) is None
        assert digest not in [d async for d, _ in store.digests()]
        assert not {name, aborted} & {n async for n, _ in store.staged()}

    run_with(blob_backend, scenario)


def test_committing_an_already_stored_digest(blob_backend: Callable[[], BlobStore]) -> None:
    data = os.urandom(10_000)
    digest = digest_of(data)

    async def scenario(store: BlobStore) -> None:
        for _ in range(2):
            name = upload_id()
            size, state = await stage(store, name, data)
            await store.stage_commit(name, state, size, digest)
            assert name not in [n async for n, _ in store.staged()]
        assert await read_all(store.read(digest)) == data

    run_with(blob_backend, scenario)


def test_staged_uploads_are_listed_and_aborted(blob_backend: Callable[[], BlobStore]) -> None:
    async def scenario(store: BlobStore) -> None:
        first, second = upload_id(), upload_id()
        _, state = await stage(store, first, b"data")
        await stage(store, second)
        listed = dict([item async for item in store.staged()])
        assert {first, second} <= set(listed)
        assert all(changed <= time.time() + 1 for changed in listed.values())
        await store.stage_abort(first, state)
        await store.stage_abort(second, None)  # the session record is lost
        await store.stage_abort(second, None)  # twice: not an error
        assert not {first, second} & {n async for n, _ in store.staged()}

    run_with(blob_backend, scenario)


def test_an_empty_blob(blob_backend: Callable[[], BlobStore]) -> None:
    async def scenario(store: BlobStore) -> None:
        name = upload_id()
        size, state = await stage(store, name)
        await store.stage_commit(name, state, size, digest_of(b""))
        info = await store.stat(digest_of(b""))
        assert info is not None
        assert info.size == 0
        assert await read_all(store.read(digest_of(b""))) == b""

    run_with(blob_backend, scenario)


# ------------------------------------------------------------------ metadata stores

D = [digest_of(str(i).encode()) for i in range(10)]
FUTURE = 10.0  # seconds: collect as if everything were older than the grace period


def manifest(
    content: bytes, *, subject: Digest | None = None, artifact_type: str | None = None
) -> ManifestRecord:
    return ManifestRecord(
        digest=digest_of(content),
        media_type="application/vnd.oci.image.manifest.v1+json",
        content=content,
        artifact_type=artifact_type,
        subject=subject,
        annotations={"a": "b"} if subject else None,
        config_media_type="application/vnd.example.config",
    )


def session(name: str, repository: str = "r", client: str = "10.0.0.1") -> UploadRecord:
    now = time.time()
    return UploadRecord(name, repository, client, 0, b"", b"", now, now)


async def link(store: MetadataStore, repository: str, digest: Digest, size: int) -> None:
    """Link a blob as a push does: under an announcement of its publication."""
    assert await store.publish_begin(digest, "pusher", 30)
    try:
        assert await store.link_blob(repository, digest, size, announced_by="pusher")
    finally:
        await store.publish_end(digest, "pusher")


async def bytes_deleted(store: MetadataStore, digest: Digest) -> None:
    """Finish a deletion as a collection does once the bytes are gone: under the ``gc`` lease."""
    assert await store.blob_delete_fence(digest, "gc", "collector", 30)
    assert await store.blob_deleted(digest, "gc", "collector")


def test_open_creates_the_schema_and_migrate_is_idempotent(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        assert await store.migrate() == (CURRENT_VERSION, CURRENT_VERSION)
        assert await store.repositories(10, None) == []

    run_with(metadata_backend.make, scenario)


def test_blob_links_and_repositories(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        assert not await store.repository_exists("a/x")
        for name in ("b", "a/x", "a/y", "c"):
            await link(store, name, D[0], 7)
        assert await store.repository_exists("a/x")
        assert await store.linked_blob_size("a/x", D[0]) == 7
        assert await store.linked_blob_size("a/x", D[1]) is None
        assert await store.blob_repositories(D[0]) == ["a/x", "a/y", "b", "c"]
        assert await store.blob_is_recorded(D[0])
        assert not await store.blob_is_recorded(D[1])
        assert await store.repositories(2, None) == ["a/x", "a/y"]
        assert await store.repositories(2, "a/y") == ["b", "c"]
        assert await store.repositories(2, "c") == []
        assert await store.unlink_blob("b", D[0], refuse_if_used=True) == DeleteOutcome(True)
        assert await store.unlink_blob("b", D[0], refuse_if_used=True) == DeleteOutcome(False)
        assert await store.unlink_blob("nope", D[0], refuse_if_used=False) == DeleteOutcome(False)

    run_with(metadata_backend.make, scenario)


def test_a_refused_manifest_leaves_no_trace(metadata_backend: MetadataBackend) -> None:
    record = manifest(b"m")

    async def scenario(store: MetadataStore) -> None:
        missing = await store.put_manifest("ghost/repo", record, blobs=[D[0], D[1]], children=[], tags=["t"])
        assert sorted(missing) == sorted([D[0], D[1]])
        assert not await store.repository_exists("ghost/repo")
        await link(store, "real", D[0], 1)
        missing = await store.put_manifest("real", record, blobs=[D[0], D[1]], children=[D[2]], tags=["t"])
        assert sorted(missing) == sorted([D[1], D[2]])
        assert await store.manifest("real", record.digest) is None
        assert await store.tags("real", 10, None) == []

    run_with(metadata_backend.make, scenario)


def test_manifests_tags_and_pagination(metadata_backend: MetadataBackend) -> None:
    first, second = manifest(b"first"), manifest(b"second")

    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        assert await store.put_manifest("r", first, blobs=[D[0]], children=[], tags=["b", "a"]) == []
        assert await store.put_manifest("r", second, blobs=[D[0], D[0]], children=[], tags=["c"]) == []
        stored = await store.manifest("r", first.digest)
        assert stored == first
        assert await store.manifest("other", first.digest) is None
        assert await store.tag_target("r", "a") == first.digest
        assert await store.tagged_manifest("r", "a") == first
        assert await store.tagged_manifest("r", "c") == second
        assert await store.tagged_manifest("r", "missing") is None
        assert await store.tagged_manifest("other", "a") is None
        assert await store.tags("r", 2, None) == ["a", "b"]
        assert await store.tags("r", 2, "b") == ["c"]
        assert await store.tags("unknown", 2, None) is None
        digests = sorted([first.digest, second.digest])
        assert await store.manifest_digests("r", 1, None) == digests[:1]
        assert await store.manifest_digests("r", 5, digests[0]) == digests[1:]
        # Moving a tag.
        await store.put_manifest("r", second, blobs=[D[0]], children=[], tags=["a"])
        assert await store.tag_target("r", "a") == second.digest
        assert await store.tagged_manifest("r", "a") == second
        assert await store.delete_tag("r", "a")
        assert not await store.delete_tag("r", "a")
        assert await store.tag_target("r", "a") is None
        assert await store.tagged_manifest("r", "a") is None

    run_with(metadata_backend.make, scenario)


def test_sparse_manifests_record_absent_references(metadata_backend: MetadataBackend) -> None:
    record = manifest(b"sparse")

    async def scenario(store: MetadataStore) -> None:
        assert (
            await store.put_manifest("s", record, blobs=[D[0]], children=[D[1]], tags=["t"], sparse=True)
            == []
        )
        assert await store.tag_target("s", "t") == record.digest
        # The reference is recorded: a blob pushed later is used by this manifest.
        await link(store, "s", D[0], 1)
        outcome = await store.unlink_blob("s", D[0], refuse_if_used=True)
        assert outcome == DeleteOutcome(False, [record.digest])

    run_with(metadata_backend.make, scenario)


def test_deletes_refused_while_referenced(metadata_backend: MetadataBackend) -> None:
    image = manifest(b"image")
    index = ManifestRecord(digest_of(b"index"), "application/vnd.oci.image.index.v1+json", b"index")

    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        await store.put_manifest("r", image, blobs=[D[0]], children=[], tags=["image"])
        await store.put_manifest("r", index, blobs=[], children=[image.digest], tags=["index"])
        assert await store.unlink_blob("r", D[0], refuse_if_used=True) == DeleteOutcome(False, [image.digest])
        assert await store.linked_blob_size("r", D[0]) == 1  # the refusal changed nothing
        refused = await store.delete_manifest("r", image.digest, refuse_if_listed=True)
        assert refused == DeleteOutcome(False, [index.digest])
        assert await store.manifest("r", image.digest) is not None
        # The order clients use: the index, then its manifest, then the blobs.
        assert await store.delete_manifest("r", index.digest, refuse_if_listed=True) == DeleteOutcome(True)
        assert await store.tag_target("r", "index") is None
        assert await store.delete_manifest("r", image.digest, refuse_if_listed=True) == DeleteOutcome(True)
        assert await store.tag_target("r", "image") is None  # its tags went with it
        assert await store.tagged_manifest("r", "image") is None
        assert await store.unlink_blob("r", D[0], refuse_if_used=True) == DeleteOutcome(True)
        assert await store.delete_manifest("r", image.digest, refuse_if_listed=True) == DeleteOutcome(False)

    run_with(metadata_backend.make, scenario)


def test_permissive_deletes(metadata_backend: MetadataBackend) -> None:
    image = manifest(b"image")

    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        await store.put_manifest("r", image, blobs=[D[0]], children=[], tags=["t"])
        assert await store.unlink_blob("r", D[0], refuse_if_used=False) == DeleteOutcome(True)
        assert await store.delete_manifest("r", image.digest, refuse_if_listed=False) == DeleteOutcome(True)

    run_with(metadata_backend.make, scenario)


def test_referrers(metadata_backend: MetadataBackend) -> None:
    subject = manifest(b"subject")
    referrers = [
        manifest(f"ref{i}".encode(), subject=subject.digest, artifact_type=f"t/{i % 2}") for i in range(5)
    ]

    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        await store.put_manifest("r", subject, blobs=[D[0]], children=[], tags=[])
        for referrer in referrers:
            await store.put_manifest("r", referrer, blobs=[D[0]], children=[], tags=[])
        found = await store.referrers("r", subject.digest, None, 10, None)
        assert [r.digest for r in found] == sorted(r.digest for r in referrers)
        assert found[0].size == len(next(r for r in referrers if r.digest == found[0].digest).content)
        assert found[0].annotations == {"a": "b"}
        odd = await store.referrers("r", subject.digest, "t/1", 10, None)
        assert {r.artifact_type for r in odd} == {"t/1"}
        assert len(odd) == 2
        page = await store.referrers("r", subject.digest, None, 2, found[1].digest)
        assert [r.digest for r in page] == [r.digest for r in found[2:4]]
        assert await store.referrers("other", subject.digest, None, 10, None) == []

    run_with(metadata_backend.make, scenario)


def test_upload_sessions_and_caps(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        assert await store.upload_create(session("u1", "r", "a"), per_repository=2, per_client=0)
        assert await store.upload_create(session("u2", "r", "b"), per_repository=2, per_client=0)
        assert not await store.upload_create(session("u3", "r", "c"), per_repository=2, per_client=0)
        assert await store.upload("u3") is None
        assert await store.upload_create(session("u4", "s", "a"), per_repository=0, per_client=2)
        assert not await store.upload_create(session("u5", "t", "a"), per_repository=0, per_client=2)
        assert await store.upload_create(session("u6", "t", "a"), per_repository=0, per_client=0)
        record = await store.upload("u1")
        assert record is not None
        assert (record.repository, record.client, record.size) == ("r", "a", 0)
        await store.upload_delete("u1")
        assert await store.upload("u1") is None
        assert await store.upload_create(session("u7", "r", "c"), per_repository=2, per_client=0)

    run_with(metadata_backend.make, scenario)


def test_concurrent_claims_of_one_upload(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        await store.upload_create(session("u"), per_repository=0, per_client=0)
        claims = await asyncio.gather(*(store.upload_claim("u", f"h{i}", 30) for i in range(4)))
        winners = [i for i, claim in enumerate(claims) if claim is not None]
        assert len(winners) == 1
        holder = f"h{winners[0]}"
        other = "h9"
        assert await store.upload_claim("u", other, 30) is None
        assert await store.upload_claim("u", holder, 30) is not None  # renewing
        assert not await store.upload_advance("u", other, size=5, hash_state=b"x", stage=b"y")
        assert await store.upload_advance("u", holder, size=5, hash_state=b"state", stage=b"stage")
        record = await store.upload_claim("u", other, 30)  # the advance released the lease
        assert record is not None
        assert (record.size, record.hash_state, record.stage) == (
            5,
            b"state",
            b"stage",
        )
        await store.upload_release("u", other)
        assert await store.upload_claim("u", holder, 30) is not None
        assert await store.upload_claim("missing", holder, 30) is None

    run_with(metadata_backend.make, scenario)


def test_an_expired_upload_lease_is_taken_over(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        await store.upload_create(session("u"), per_repository=0, per_client=0)
        assert await store.upload_claim("u", "dead", 0.2) is not None
        assert await store.upload_claim("u", "next", 30) is None
        await asyncio.sleep(0.3)
        assert await store.upload_claim("u", "next", 30) is not None
        # The holder that lost its lease cannot make its bytes count.
        assert not await store.upload_advance("u", "dead", size=9, hash_state=b"", stage=b"")
        assert await store.upload_advance("u", "next", size=3, hash_state=b"", stage=b"")
        record = await store.upload("u")
        assert record is not None
        assert record.size == 3

    run_with(metadata_backend.make, scenario)


def test_uploads_older_than_skips_live_leases(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        for name in ("idle", "busy"):
            await store.upload_create(session(name), per_repository=0, per_client=0)
        await store.upload_claim("busy", "writer", 30)
        old = await store.uploads_older_than(time.time() + FUTURE)
        assert [record.id for record in old] == ["idle"]
        assert await store.uploads_older_than(time.time() - FUTURE) == []

    run_with(metadata_backend.make, scenario)


def test_garbage_collection_marks_and_sweeps(metadata_backend: MetadataBackend) -> None:
    tagged, untagged = manifest(b"tagged"), manifest(b"untagged")
    child = manifest(b"child")
    index = ManifestRecord(digest_of(b"idx"), "application/vnd.oci.image.index.v1+json", b"idx")
    referrer = manifest(b"referrer", subject=tagged.digest)

    async def scenario(store: MetadataStore) -> None:
        for blob in D[:4]:
            await link(store, "r", blob, 10)
        await store.put_manifest("r", tagged, blobs=[D[0]], children=[], tags=["keep"])
        await store.put_manifest("r", untagged, blobs=[D[1]], children=[], tags=[])
        await store.put_manifest("r", child, blobs=[D[2]], children=[], tags=[])
        await store.put_manifest("r", index, blobs=[], children=[child.digest], tags=["idx"])
        await store.put_manifest("r", referrer, blobs=[D[0]], children=[], tags=[])
        # Nothing is older than the grace period yet.
        recent = await store.collect_garbage(time.time() - FUTURE, dry_run=False)
        assert (recent.manifests, recent.blobs, recent.blob_links) == ([], [], [])
        dry = await store.collect_garbage(time.time() + FUTURE, dry_run=True)
        assert dry.manifests == [("r", untagged.digest)]
        assert sorted(dry.blobs) == sorted([D[1], D[3]])
        assert await store.manifest("r", untagged.digest) is not None  # a dry run changes nothing
        report = await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert report.manifests == [("r", untagged.digest)]
        assert sorted(report.blob_links) == sorted([("r", D[1]), ("r", D[3])])
        assert sorted(report.blobs) == sorted([D[1], D[3]])
        assert report.freed_bytes == 20
        assert report.repositories == []
        for kept in (tagged, child, index, referrer):
            assert await store.manifest("r", kept.digest) is not None
        assert await store.blobs_being_deleted() == sorted([D[1], D[3]])
        assert not await store.blob_is_recorded(D[1])

    run_with(metadata_backend.make, scenario)


def test_publishing_waits_for_a_deletion(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        await store.unlink_blob("r", D[0], refuse_if_used=False)
        report = await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert report.blobs == [D[0]]
        assert not await store.publish_begin(D[0], "pusher", 30)  # its bytes are being deleted
        await bytes_deleted(store, D[0])
        assert await store.blobs_being_deleted() == []
        assert await store.publish_begin(D[0], "pusher", 30)
        await store.publish_end(D[0], "pusher")

    run_with(metadata_backend.make, scenario)


def test_announced_blobs_are_not_collected(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        await store.unlink_blob("r", D[0], refuse_if_used=False)
        assert await store.publish_begin(D[0], "pusher", 30)
        report = await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert report.blobs == []
        assert await store.blob_is_recorded(D[0])
        assert not await store.blob_delete_begin(D[0])
        await store.publish_end(D[0], "pusher")
        report = await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert report.blobs == [D[0]]
        # An announcement whose holder died (expired) protects nothing.
        await bytes_deleted(store, D[0])
        await link(store, "r", D[1], 1)
        await store.unlink_blob("r", D[1], refuse_if_used=False)
        assert await store.publish_begin(D[1], "dead", 0.01)
        await asyncio.sleep(0.05)
        assert (await store.collect_garbage(time.time() + FUTURE, dry_run=False)).blobs == [D[1]]

    run_with(metadata_backend.make, scenario)


def test_stray_bytes_are_entered_as_being_deleted(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        assert not await store.blob_delete_begin(D[0])  # recorded: not a stray
        assert await store.publish_begin(D[2], "pusher", 30)
        assert not await store.blob_delete_begin(D[2])  # announced
        assert await store.blob_delete_begin(D[1])
        assert await store.blobs_being_deleted() == [D[1]]
        assert not await store.publish_begin(D[1], "pusher", 30)
        await bytes_deleted(store, D[1])
        assert await store.publish_begin(D[1], "pusher", 30)

    run_with(metadata_backend.make, scenario)


def test_a_stalled_collection_does_not_delete_a_digest_pushed_again(
    metadata_backend: MetadataBackend,
) -> None:
    """Collection 1 read D[0] as being deleted, then stalled past its lease; another took the
    lease, finished the deletion and released it, and a push published D[0] again. Collection
    1, back with its stale list, may take the free lease again, but the fence tells it that
    D[0] is no longer being deleted: it must not delete the bytes pushed again."""

    async def scenario(store: MetadataStore) -> None:
        await link(store, "old", D[0], 1)
        await store.unlink_blob("old", D[0], refuse_if_used=False)
        assert (await store.collect_garbage(time.time() + FUTURE, dry_run=False)).blobs == [D[0]]
        stale = await store.blobs_being_deleted()
        assert await store.lease_acquire("gc", "first", 0.2)
        await asyncio.sleep(0.3)  # collection 1 stalls past its lease
        assert await store.blob_delete_fence(D[0], "gc", "second", 30)  # taken over
        assert not await store.blob_delete_fence(D[0], "gc", "first", 30)  # while second holds it
        assert await store.blob_deleted(D[0], "gc", "second")
        await store.lease_release("gc", "second")
        await link(store, "new", D[0], 1)  # the push that was waiting
        assert stale == [D[0]]
        assert not await store.blob_delete_fence(D[0], "gc", "first", 30)
        assert await store.lease_acquire("gc", "first", 30)  # the lease is first's: D[0] is done
        assert not await store.blob_deleted(D[0], "gc", "first")
        assert await store.linked_blob_size("new", D[0]) == 1

    run_with(metadata_backend.make, scenario)


def test_a_collection_that_lost_its_lease_cannot_let_pushes_through(
    metadata_backend: MetadataBackend,
) -> None:
    """Collection 1 passed the fence, then stalled past its lease while another took it over:
    its late report that the bytes are gone must not end the deletion (the new holder has yet
    to delete them), so a push of the digest still waits."""

    async def scenario(store: MetadataStore) -> None:
        await link(store, "r", D[0], 1)
        await store.unlink_blob("r", D[0], refuse_if_used=False)
        await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert await store.blob_delete_fence(D[0], "gc", "first", 0.2)
        await asyncio.sleep(0.3)
        assert await store.blob_delete_fence(D[0], "gc", "second", 30)
        assert not await store.blob_deleted(D[0], "gc", "first")
        assert await store.blobs_being_deleted() == [D[0]]
        assert not await store.publish_begin(D[0], "pusher", 30)
        assert await store.blob_deleted(D[0], "gc", "second")
        assert await store.publish_begin(D[0], "pusher", 30)

    run_with(metadata_backend.make, scenario)


def test_a_push_that_stalled_past_its_announcement_is_refused_a_swept_blob(
    metadata_backend: MetadataBackend,
) -> None:
    """D[0] is linked only in "a", unused. A push of it to "b" announces it, then stalls past
    the announcement; a collection removes the link and sweeps D[0], whose bytes are deleted.
    The push's link must be refused (it would record a blob with no bytes), whether the
    deletion is under way or done; the same for bytes entered as strays. A push that stalled
    as long but whose digest nobody collected still links."""

    async def scenario(store: MetadataStore) -> None:
        await link(store, "a", D[0], 1)
        assert await store.publish_begin(D[0], "slow", 0.05)
        await asyncio.sleep(0.1)
        report = await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert (report.blob_links, report.blobs) == ([("a", D[0])], [D[0]])
        assert not await store.link_blob("b", D[0], 1, announced_by="slow")  # being deleted
        await bytes_deleted(store, D[0])
        assert not await store.link_blob("b", D[0], 1, announced_by="slow")  # deleted
        await store.publish_end(D[0], "slow")
        assert not await store.blob_is_recorded(D[0])
        assert await store.linked_blob_size("b", D[0]) is None
        assert await store.publish_begin(D[1], "slow", 0.05)  # bytes of a push that crashed...
        await asyncio.sleep(0.1)
        assert await store.blob_delete_begin(D[1])  # ...entered as strays
        await bytes_deleted(store, D[1])
        assert not await store.link_blob("b", D[1], 1, announced_by="slow")
        assert await store.publish_begin(D[2], "slow", 0.05)
        await asyncio.sleep(0.1)
        await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert await store.link_blob("b", D[2], 1, announced_by="slow")
        assert await store.linked_blob_size("b", D[2]) == 1

    run_with(metadata_backend.make, scenario)


class ClockAhead:
    """The ``time`` module of a replica whose clock runs ``seconds`` ahead of the others'."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return time.time() + self.seconds


def test_leases_and_announcements_expire_by_the_database_clock(
    metadata_backend: MetadataBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose clock runs two minutes ahead must neither take a lease that another
    holds for 30 s more (the gc lease, an upload's writer lease), nor purge an upload being
    written, nor collect bytes that a push on another replica announced."""
    from ocikit.registry.storage import sql

    async def scenario(store: MetadataStore) -> None:
        assert await store.lease_acquire("gc", "a", 30)
        assert await store.publish_begin(D[0], "pusher", 30)
        assert await store.upload_create(session("written", "r", "a"), per_repository=0, per_client=0)
        assert await store.upload_claim("written", "writer", 30) is not None
        monkeypatch.setattr(sql, "time", ClockAhead(120))
        assert not await store.lease_acquire("gc", "b", 30)
        assert not await store.blob_delete_begin(D[0])
        assert await store.blobs_being_deleted() == []
        assert await store.upload_claim("written", "intruder", 30) is None
        assert await store.uploads_older_than(time.time() + FUTURE) == []

    run_with(metadata_backend.make, scenario)


def test_empty_repositories_are_removed(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        await link(store, "empty/soon", D[0], 1)
        await link(store, "kept", D[1], 1)
        await store.put_manifest("kept", manifest(b"k"), blobs=[D[1]], children=[], tags=["t"])
        assert (await store.collect_garbage(time.time() - FUTURE, dry_run=False)).repositories == []
        report = await store.collect_garbage(time.time() + FUTURE, dry_run=False)
        assert report.repositories == ["empty/soon"]
        assert not await store.repository_exists("empty/soon")
        assert await store.repositories(10, None) == ["kept"]

    run_with(metadata_backend.make, scenario)


def test_leases(metadata_backend: MetadataBackend) -> None:
    async def scenario(store: MetadataStore) -> None:
        assert await store.lease_acquire("leader", "a", 0.2)
        assert not await store.lease_acquire("leader", "b", 30)
        assert await store.lease_acquire("leader", "a", 0.2)  # renewal
        assert await store.lease_acquire("other", "b", 30)  # leases are independent
        await asyncio.sleep(0.3)
        assert await store.lease_acquire("leader", "b", 30)  # a's lease expired
        assert not await store.lease_acquire("leader", "a", 30)
        await store.lease_release("leader", "a")  # not a's: nothing happens
        assert not await store.lease_acquire("leader", "a", 30)
        await store.lease_release("leader", "b")
        assert await store.lease_acquire("leader", "a", 30)
        results = await asyncio.gather(*(store.lease_acquire("race", f"h{i}", 30) for i in range(4)))
        assert results.count(True) == 1

    run_with(metadata_backend.make, scenario)


def test_migrating_a_version_1_database(metadata_backend: MetadataBackend) -> None:
    """A database as ocikit wrote it before the versioned schema (``MIGRATIONS[0]`` is that
    schema verbatim) is refused until ``ocikit migrate``, and keeps its content."""
    content = b'{"schemaVersion":2}'
    manifest_digest = digest_of(content)
    before = [
        *statements(MIGRATIONS[0], metadata_backend.dialect),
        "INSERT INTO repositories (name, created_at) VALUES ('old/repo', 1)",
        f"INSERT INTO blobs (digest, size, pushed_at) VALUES ('{D[0]}', 3, 1)",
        f"INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (1, '{D[0]}', 1)",
    ]
    after = [
        "INSERT INTO tags (repository_id, name, digest, updated_at) "
        f"VALUES (1, 'v1', '{manifest_digest}', 1)",
        f"INSERT INTO manifest_blobs VALUES (1, '{manifest_digest}', '{D[0]}')",
        "INSERT INTO uploads (id, repository, created_at, updated_at) VALUES ('abc', 'old/repo', 1, 1)",
    ]
    insert_manifest = (
        "INSERT INTO manifests (repository_id, digest, media_type, content, pushed_at) VALUES "
        f"(1, '{manifest_digest}', 'application/vnd.oci.image.manifest.v1+json', ?, 1)"
    )

    async def build() -> None:
        await metadata_backend.execute(before)
        await _insert_manifest(metadata_backend, insert_manifest, content)
        await metadata_backend.execute(after)

    asyncio.run(build())

    async def refused() -> None:
        store = metadata_backend.make()
        with pytest.raises(SchemaError, match="ocikit migrate --metadata"):
            await store.open()
        await store.close()
        store = metadata_backend.make()
        assert await store.migrate() == (1, CURRENT_VERSION)
        await store.close()

    asyncio.run(refused())

    async def scenario(store: MetadataStore) -> None:
        assert await store.tag_target("old/repo", "v1") == digest_of(content)
        record = await store.manifest("old/repo", digest_of(content))
        assert record is not None
        assert record.content == content
        assert await store.unlink_blob("old/repo", D[0], refuse_if_used=True) == DeleteOutcome(
            False, [digest_of(content)]
        )
        assert await store.upload("abc") is None  # version-1 sessions cannot be carried over
        assert await store.migrate() == (CURRENT_VERSION, CURRENT_VERSION)

    run_with(metadata_backend.make, scenario)


def test_a_version_2_database_needs_migrating_only_where_version_3_changes_it(
    metadata_backend: MetadataBackend,
) -> None:
    """Version 3 adds PostgreSQL's triggers that tell replicas of link removals: a PostgreSQL
    database is refused until ``ocikit migrate``; SQLite, with nothing to change, opens."""
    asyncio.run(
        metadata_backend.execute(
            [
                *(sql for step in MIGRATIONS[:2] for sql in statements(step, metadata_backend.dialect)),
                "INSERT INTO schema_version (version) VALUES (2)",
            ]
        )
    )

    async def opened() -> None:
        store = metadata_backend.make()
        if metadata_backend.dialect == "postgresql":
            with pytest.raises(SchemaError, match="ocikit migrate --metadata"):
                await store.open()
            await store.close()
            store = metadata_backend.make()
            assert await store.migrate() == (2, CURRENT_VERSION)
            await store.close()
            store = metadata_backend.make()
        await store.open()
        try:
            assert await store.migrate() == (CURRENT_VERSION, CURRENT_VERSION)
        finally:
            await store.close()

    asyncio.run(opened())


async def _insert_manifest(backend: MetadataBackend, statement: str, content: bytes) -> None:
    if backend.dialect == "sqlite":
        path = Path(backend.make().url.removeprefix("sqlite://"))  # type: ignore[attr-defined]
        with sqlite3.connect(path) as db:
            db.execute(statement, (content,))
        return
    import asyncpg

    connection = await asyncpg.connect(backend.make()._dsn)  # type: ignore[attr-defined]
    try:
        await connection.execute(statement.replace("?", "$1"), content)
    finally:
        await connection.close()


def test_a_newer_schema_is_refused(metadata_backend: MetadataBackend) -> None:
    run_with(metadata_backend.make, lambda store: asyncio.sleep(0))
    asyncio.run(metadata_backend.execute([f"UPDATE schema_version SET version = {CURRENT_VERSION + 1}"]))

    async def scenario() -> None:
        store = metadata_backend.make()
        with pytest.raises(SchemaError, match="newer"):
            await store.open()
        await store.close()

    asyncio.run(scenario())


def test_pushes_racing_collections_and_deletes_leave_no_dangling_manifest(
    metadata_backend: MetadataBackend,
) -> None:
    """Pushes sharing layers and tags, refusing blob deletes and collections with no grace
    period, all at once: every tagged manifest keeps its blobs linked and recorded."""

    def blobs_of(i: int) -> list[Digest]:
        return [digest_of(f"config{i}".encode()), digest_of(f"layer{i % 3}".encode())]

    async def push(store: MetadataStore, i: int) -> None:
        """As a client does: the blobs, then the manifest, again while a collection took a link."""
        tags = [f"t{i}", "latest"] if i % 2 else ["latest", f"t{i}"]
        for _ in range(20):
            for blob in blobs_of(i):
                while not await store.publish_begin(blob, f"pusher{i}", 30):
                    await asyncio.sleep(0.001)  # its old bytes are being deleted
                assert await store.link_blob("race", blob, 1, announced_by=f"pusher{i}")
                await store.publish_end(blob, f"pusher{i}")
            record = manifest(f"m{i}".encode())
            if not await store.put_manifest("race", record, blobs=blobs_of(i)[::-1], children=[], tags=tags):
                return

    async def collect(store: MetadataStore) -> None:
        for _ in range(3):  # no grace period: anything linked before now and unused goes
            report = await store.collect_garbage(time.time(), dry_run=False)
            for blob in report.blobs:  # as if its bytes were gone
                if await store.blob_delete_fence(blob, "gc", "collector", 30):
                    await store.blob_deleted(blob, "gc", "collector")

    async def scenario(store: MetadataStore) -> None:
        for start in range(0, 24, 6):
            work: list[Coroutine[Any, Any, Any]] = []
            for i in range(start, start + 6):
                work += [
                    push(store, i),
                    store.unlink_blob("race", blobs_of(i)[1], refuse_if_used=True),
                    collect(store),
                ]
            await asyncio.gather(*work)
        tags = await store.tags("race", 1000, None) or []
        assert len(tags) > 10
        being_deleted = set(await store.blobs_being_deleted())
        for tag in tags:
            target = await store.tag_target("race", tag)
            assert target is not None
            i = (
                int(tag[1:])
                if tag != "latest"
                else next(i for i in range(24) if manifest(f"m{i}".encode()).digest == target)
            )
            assert await store.manifest("race", target) is not None
            for blob in blobs_of(i):
                assert await store.linked_blob_size("race", blob) == 1, (tag, blob)
                assert blob not in being_deleted

    run_with(metadata_backend.make, scenario)
