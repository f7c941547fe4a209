"""The PostgreSQL metadata store's memory of blob links (``registry/storage/links.py``), on a
real PostgreSQL shared by two stores as by two replicas: a link is remembered while the store
listens for removals, and forgotten when any replica removes one or the listening ends."""

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
KEPT, REMOVED, SWEPT = (Digest(f"sha256:{c * 64}") for c in "abc")


async def _raw(url: str, sql: str, *args: Any) -> None:
    """SQL behind the stores' backs: no NOTIFY, as an operator's own statement would send."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


async def _forget_link_behind_the_back(url: str, digest: Digest) -> None:
    await _raw(url, "DELETE FROM repository_blobs WHERE digest = $1", digest)


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


def test_a_link_one_replica_removes_is_forgotten_by_the_other(postgres: Any) -> None:
    url = postgres.database()

    async def scenario(first: PostgresMetadataStore, second: PostgresMetadataStore) -> None:
        for digest, size in ((KEPT, 10), (REMOVED, 20), (SWEPT, 30)):
            await first.link_blob(REPOSITORY, digest, size)
            assert await second.linked_blob_size(REPOSITORY, digest) == size
        # Remembered: a removal the store did not make (so did not announce) goes unseen.
        await _forget_link_behind_the_back(url, KEPT)
        assert await second.linked_blob_size(REPOSITORY, KEPT) == 10
        # A removal through a store is heard by the other at its commit.
        assert (await first.unlink_blob(REPOSITORY, REMOVED, refuse_if_used=False)).deleted
        await _until(lambda: _unlinked(second, REMOVED))
        assert await second.linked_blob_size(REPOSITORY, KEPT) is None  # everything was forgotten
        # The same for links garbage collection removes.
        assert await second.linked_blob_size(REPOSITORY, SWEPT) == 30
        report = await first.collect_garbage(time.time() + 1, dry_run=False)
        assert (REPOSITORY, SWEPT) in report.blob_links
        await _until(lambda: _unlinked(second, SWEPT))

    _run(url, scenario)


async def _unlinked(store: PostgresMetadataStore, digest: Digest) -> bool:
    return await store.linked_blob_size(REPOSITORY, digest) is None


def test_nothing_is_remembered_while_the_listening_connection_is_gone(postgres: Any) -> None:
    """A removal made while a replica cannot hear it must not leave it a stale link: with its
    listening connection killed, the store asks PostgreSQL every time, until it listens again."""
    url = postgres.database()

    async def scenario(first: PostgresMetadataStore, second: PostgresMetadataStore) -> None:
        await first.link_blob(REPOSITORY, KEPT, 10)
        assert await second.linked_blob_size(REPOSITORY, KEPT) == 10
        await _raw(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            LISTENER_NAME,
        )
        await _forget_link_behind_the_back(url, KEPT)
        await _until(lambda: _unlinked(second, KEPT))
        await first.link_blob(REPOSITORY, REMOVED, 20)
        for _ in range(3):  # read, and not remembered, while nobody listens
            assert await second.linked_blob_size(REPOSITORY, REMOVED) == 20
            await _forget_link_behind_the_back(url, REMOVED)
            assert await second.linked_blob_size(REPOSITORY, REMOVED) is None
            await first.link_blob(REPOSITORY, REMOVED, 20)
        await _until(lambda: _remembers(url, second, REMOVED))  # listening again

    _run(url, scenario)


async def _remembers(url: str, store: PostgresMetadataStore, digest: Digest) -> bool:
    """Whether the store still answers a link PostgreSQL no longer holds (put back after)."""
    await store.linked_blob_size(REPOSITORY, digest)
    await _forget_link_behind_the_back(url, digest)
    remembered = await store.linked_blob_size(REPOSITORY, digest) is not None
    await _raw(url, "INSERT INTO repository_blobs SELECT id, $1, 0 FROM repositories", digest)
    return remembered
