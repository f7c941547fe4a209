"""The PostgreSQL metadata store's memory of blob links (``registry/storage/links.py``), on a
real PostgreSQL shared by two stores as by two replicas: a link is remembered while the store
listens for removals, and forgotten when anyone removes one or the listening ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ocikit.registry.storage.links import LISTENER_NAME
from ocikit.registry.storage.postgres import PostgresMetadataStore
from ocikit.spec.digest import Digest

REPOSITORY = "team/app"
KEPT, REMOVED, BY_HAND, SWEPT = (Digest(f"sha256:{c * 64}") for c in "abcd")


async def _raw(url: str, sql: str, *args: Any) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


async def _remove_silently(url: str, digest: Digest) -> None:
    """Remove a link with PostgreSQL's trigger off, so that no replica is told: what a store
    then still answers, it answers from memory."""
    await _raw(
        url,
        "BEGIN; ALTER TABLE repository_blobs DISABLE TRIGGER repository_blobs_removed; "
        f"DELETE FROM repository_blobs WHERE digest = '{digest}'; "
        "ALTER TABLE repository_blobs ENABLE TRIGGER repository_blobs_removed; COMMIT",
    )


async def _link(store: PostgresMetadataStore, digest: Digest, size: int) -> None:
    """Link a blob into REPOSITORY as a push does, under an announcement."""
    assert await store.publish_begin(digest, "pusher", 30)
    assert await store.link_blob(REPOSITORY, digest, size, announced_by="pusher")
    await store.publish_end(digest, "pusher")


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


Replicas = Callable[[PostgresMetadataStore, PostgresMetadataStore], Awaitable[None]]


def _run(url: str, scenario: Replicas) -> None:
    async def both() -> None:
        first, second = PostgresMetadataStore(url), PostgresMetadataStore(url)
        await first.open()
        await second.open()
        try:
            await scenario(first, second)
        finally:
            await second.close()
            await first.close()

    asyncio.run(both())


def test_a_link_removed_anywhere_is_forgotten_by_every_replica(postgres: Any) -> None:
    url = postgres.database()

    async def scenario(first: PostgresMetadataStore, second: PostgresMetadataStore) -> None:
        for digest, size in ((KEPT, 10), (REMOVED, 20), (BY_HAND, 30), (SWEPT, 40)):
            await _link(first, digest, size)
            assert await second.linked_blob_size(REPOSITORY, digest) == size
        await _remove_silently(url, KEPT)
        assert await second.linked_blob_size(REPOSITORY, KEPT) == 10  # remembered
        # A removal through a store is heard by the other at its commit, and all is forgotten.
        assert (await first.unlink_blob(REPOSITORY, REMOVED, refuse_if_used=False)).deleted
        await _until(lambda: _unlinked(second, REMOVED))
        assert await second.linked_blob_size(REPOSITORY, KEPT) is None
        # So is an operator's own SQL, and garbage collection.
        assert await second.linked_blob_size(REPOSITORY, BY_HAND) == 30
        await _raw(url, "DELETE FROM repository_blobs WHERE digest = $1", BY_HAND)
        await _until(lambda: _unlinked(second, BY_HAND))
        assert await second.linked_blob_size(REPOSITORY, SWEPT) == 40
        report = await first.collect_garbage(time.time() + 1, dry_run=False)
        assert (REPOSITORY, SWEPT) in report.blob_links
        await _until(lambda: _unlinked(second, SWEPT))

    _run(url, scenario)


async def _unlinked(store: PostgresMetadataStore, digest: Digest, silently: str = "") -> bool:
    """Whether the store no longer answers the link (removed first, silently, if asked)."""
    if silently:
        await _remove_silently(silently, digest)
    return await store.linked_blob_size(REPOSITORY, digest) is None


def test_nothing_is_remembered_while_the_listening_connection_is_gone(postgres: Any) -> None:
    """A removal made while a replica cannot hear it must not leave it a stale link: with its
    listening connection killed, the store asks PostgreSQL every time, until it listens again."""
    url = postgres.database()

    async def scenario(first: PostgresMetadataStore, second: PostgresMetadataStore) -> None:
        await _link(first, KEPT, 10)
        assert await second.linked_blob_size(REPOSITORY, KEPT) == 10
        await _raw(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            LISTENER_NAME,
        )
        await _until(lambda: _unlinked(second, KEPT, silently=url))
        await _link(first, REMOVED, 20)
        assert await second.linked_blob_size(REPOSITORY, REMOVED) == 20  # read, not remembered
        await _remove_silently(url, REMOVED)
        assert await second.linked_blob_size(REPOSITORY, REMOVED) is None
        await _link(first, REMOVED, 20)
        await _until(lambda: _remembers(url, second, REMOVED))  # listening again

    _run(url, scenario)


async def _remembers(url: str, store: PostgresMetadataStore, digest: Digest) -> bool:
    """Whether the store still answers a link removed silently (put back after)."""
    await store.linked_blob_size(REPOSITORY, digest)
    await _remove_silently(url, digest)
    remembered = await store.linked_blob_size(REPOSITORY, digest) is not None
    await _raw(url, "INSERT INTO repository_blobs SELECT id, $1, 0 FROM repositories", digest)
    return remembered
