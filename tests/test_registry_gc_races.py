"""Garbage collection against pushes, with a replica that stalls at the worst moment: the real
registry (in-process replicas sharing one root: SQLite and files), the real collection, and a
blob store that pauses, as a frozen process or a slow object store would, where the race is.
The interleavings are driven step by step, so each run takes the same path."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ocikit.registry import create_app, maintenance, uploads
from ocikit.registry.app import Registry
from ocikit.registry.settings import Settings
from ocikit.registry.storage.filesystem import FilesystemBlobStore
from ocikit.spec.digest import Digest
from registry_helpers import digest, error_codes

#: The ``gc`` lease, shortened so that a replica can stall past it in a test.
LEASE = 0.2


@contextlib.asynccontextmanager
async def replica(root: Path, blobs: FilesystemBlobStore | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A replica serving the registry under ``root``, and a client of it."""
    app = create_app(Settings(root=str(root)), blobs=blobs)
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            yield client
    finally:
        await app.shutdown()


@contextlib.asynccontextmanager
async def collector(root: Path, blobs: FilesystemBlobStore | None = None) -> AsyncIterator[Registry]:
    """A replica (or ``ocikit gc``) that only collects garbage: no background work of its own."""
    reg = Registry(Settings(root=str(root)), blobs=blobs)
    await reg.blobs.open()
    await reg.metadata.open()
    try:
        yield reg
    finally:
        await reg.metadata.close()
        await reg.blobs.close()


async def push(client: httpx.AsyncClient, name: str, data: bytes) -> httpx.Response:
    return await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest(data)}, content=data)


class FrozenAfterDeleting(FilesystemBlobStore):
    """The blob store of a collector whose process freezes (its event loop blocked) past the
    lease right after deleting ``digest``'s bytes, while another replica runs ``meanwhile``."""

    def __init__(self, root: Path, digest: str, meanwhile: Callable[[], None]) -> None:
        super().__init__(str(root))
        self.digest, self.meanwhile = digest, meanwhile

    async def delete(self, digest: Digest) -> None:
        await super().delete(digest)
        if digest == self.digest:
            time.sleep(LEASE * 2)
            self.meanwhile()


def test_a_collection_frozen_past_its_lease_does_not_delete_a_blob_pushed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Collection 1 sweeps two blobs and freezes after deleting the first one's bytes. Its
    lease expires; another replica finishes the deletions, releases the lease, and a push
    publishes the second blob again. Collection 1 wakes with its list, in which the second
    blob is still to be deleted: it must leave the new bytes alone."""
    monkeypatch.setattr(maintenance, "_GC_LEASE_TTL", LEASE)
    first, second = sorted([os.urandom(3000), os.urandom(3000)], key=digest)
    name = "races/frozen"

    def other_replica() -> None:
        async def finish_and_push() -> None:
            async with collector(tmp_path) as reg:  # the housekeeping of another replica
                assert await maintenance.finish_interrupted_deletions(reg) == 2
            async with replica(tmp_path) as client:
                assert (await push(client, name, second)).status_code == 201

        with ThreadPoolExecutor(1) as thread:  # another process: it runs while this one is frozen
            thread.submit(asyncio.run, finish_and_push()).result()

    async def scenario() -> httpx.Response:
        async with replica(tmp_path) as client:
            for data in (first, second):
                assert (await push(client, name, data)).status_code == 201
                assert (await client.delete(f"/v2/{name}/blobs/{digest(data)}")).status_code == 202
        frozen = FrozenAfterDeleting(tmp_path, digest(first), other_replica)
        async with collector(tmp_path, frozen) as reg:
            report = await maintenance.collect_garbage(reg, grace=0)
        assert report.blobs == [digest(first), digest(second)]
        async with replica(tmp_path) as client:
            return await client.get(f"/v2/{name}/blobs/{digest(second)}")

    pulled = asyncio.run(scenario())
    assert pulled.status_code == 200
    assert pulled.content == second


class SlowToDelete(FilesystemBlobStore):
    """An object store that takes a second to answer a delete."""

    async def delete(self, digest: Digest) -> None:
        await asyncio.sleep(1)
        await super().delete(digest)


def test_a_delete_that_would_outlive_the_lease_is_cut_off_and_the_lease_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete of bytes still unanswered when the lease would be near its end is cut off,
    and the collection fails; its lease is not released but left to expire, so no other
    collection takes over (and lets pushes through) while the delete might still arrive."""
    monkeypatch.setattr(maintenance, "_DELETE_WITHIN", 0.1)
    data = os.urandom(3000)

    async def scenario() -> None:
        async with replica(tmp_path) as client:
            assert (await push(client, "races/slow", data)).status_code == 201
            assert (await client.delete(f"/v2/races/slow/blobs/{digest(data)}")).status_code == 202
        async with collector(tmp_path, SlowToDelete(str(tmp_path))) as reg:
            with pytest.raises(TimeoutError, match=r"took longer than 0\.1 s"):
                await maintenance.collect_garbage(reg, grace=0)
            assert await reg.metadata.blobs_being_deleted() == [digest(data)]
            assert not await reg.metadata.lease_acquire("gc", "another collection", 30)
            with pytest.raises(maintenance.GCBusy):
                await maintenance.collect_garbage(reg, grace=0)

    asyncio.run(scenario())


class StallingCommit(FilesystemBlobStore):
    """The blob store of a replica whose publication of ``digest``, once ``armed``, stalls
    after the bytes are published and past the push's announcement, while ``meanwhile`` runs."""

    def __init__(self, root: Path, digest: str, meanwhile: Callable[[], Awaitable[None]]) -> None:
        super().__init__(str(root))
        self.digest, self.meanwhile, self.armed = digest, meanwhile, False

    async def stage_commit(self, upload_id: str, stage: bytes, size: int, digest: Digest) -> None:
        await super().stage_commit(upload_id, stage, size, digest)
        if self.armed and digest == self.digest:
            self.armed = False
            await asyncio.sleep(uploads._PUBLISH_WAIT * 3)  # the announcement lasts twice that
            await self.meanwhile()


def test_a_push_stalled_past_its_announcement_is_refused_a_blob_collected_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob is linked only in one repository, unused. A push of it to another announces
    it, publishes the bytes and stalls past the announcement; a collection removes the old
    link, sweeps the blob and deletes its bytes. The push must fail (503, push again) rather
    than link a blob with no bytes; pushed again, it is whole."""
    monkeypatch.setattr(uploads, "_PUBLISH_WAIT", 0.1)
    data = os.urandom(3000)
    collected: list[Digest] = []

    async def collection() -> None:
        async with collector(tmp_path) as reg:
            collected.extend((await maintenance.collect_garbage(reg, grace=0)).blobs)

    async def scenario() -> None:
        stalling = StallingCommit(tmp_path, digest(data), collection)
        async with replica(tmp_path, stalling) as client:
            assert (await push(client, "races/old", data)).status_code == 201
            stalling.armed = True
            refused = await push(client, "races/new", data)
            assert refused.status_code == 503, refused.text
            assert error_codes(refused) == ["UNAVAILABLE"]
            assert collected == [digest(data)]
            assert (await client.head(f"/v2/races/new/blobs/{digest(data)}")).status_code == 404
            assert (await push(client, "races/new", data)).status_code == 201
            pulled = await client.get(f"/v2/races/new/blobs/{digest(data)}")
            assert pulled.content == data

    asyncio.run(scenario())
