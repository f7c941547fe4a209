"""The S3 blob store (``registry/storage/s3.py``) against a real SeaweedFS, and the SeaweedFS
fixture itself: what the shared backend suite cannot see (part sizes, restarts between
appends, presigned URLs, signatures, memory)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

import botocore.exceptions
import httpx
import pytest

from ocikit.registry.storage.s3 import S3BlobStore
from ocikit.spec.digest import Digest
from seaweedfs import SeaweedFS, seaweedfs_fixture  # noqa: F401  (the seaweedfs fixture)


def test_seaweedfs_refuses_anonymous_requests(seaweedfs: SeaweedFS) -> None:
    for method, path in [("GET", "/"), ("GET", f"/{seaweedfs.bucket}"), ("PUT", f"/{seaweedfs.bucket}/anon")]:
        answer = httpx.request(method, seaweedfs.endpoint + path, content=b"x" if method == "PUT" else None)
        assert answer.status_code == 403, (method, path, answer.text)
        assert "AccessDenied" in answer.text


def test_seaweedfs_refuses_a_wrong_secret(seaweedfs: SeaweedFS) -> None:
    forged = seaweedfs.client(secret_key=seaweedfs.secret_key[::-1])
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        forged.put_object(Bucket=seaweedfs.bucket, Key="forged", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = seaweedfs.client(access_key="AKIDNOBODY")
    with pytest.raises(botocore.exceptions.ClientError):
        unknown.list_objects_v2(Bucket=seaweedfs.bucket)
    with pytest.raises(botocore.exceptions.ClientError):
        seaweedfs.client().head_object(Bucket=seaweedfs.bucket, Key="forged")


def test_seaweedfs_accepts_its_identity(seaweedfs: SeaweedFS) -> None:
    client = seaweedfs.client()
    bucket = seaweedfs.new_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"


# ---------------------------------------------------------------- the store


MiB = 1 << 20
T = TypeVar("T")
P = ParamSpec("P")


def _digest(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read_all(store: S3BlobStore, digest: Digest) -> bytes:
    return await _collect(store.read(digest))


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


@dataclass
class S3Target:
    """Where a test's store lives: its own bucket on the session's SeaweedFS."""

    server: SeaweedFS
    bucket: str
    prefix: str = "registry"

    def store(self) -> S3BlobStore:
        return S3BlobStore(self.bucket, self.prefix, endpoint=self.server.endpoint, region=self.server.region)

    def keys(self, under: str = "") -> list[str]:
        listing = self.server.client().list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{under}")
        return [item["Key"] for item in listing.get("Contents", [])]


@pytest.fixture
def s3(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> S3Target:
    for name, value in seaweedfs.environment().items():
        monkeypatch.setenv(name, value)
    return S3Target(seaweedfs, seaweedfs.new_bucket())


async def _opened(target: S3Target, work: Callable[[S3BlobStore], Awaitable[None]]) -> None:
    store = target.store()
    await store.open()
    try:
        await work(store)
    finally:
        await store.close()


async def _fresh(
    target: S3Target,
    method: Callable[Concatenate[S3BlobStore, P], Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``method`` on a store object of its own, as on another replica."""
    store = target.store()
    await store.open()
    try:
        return await method(store, *args, **kwargs)
    finally:
        await store.close()


def run(target: S3Target, work: Callable[[S3BlobStore], Awaitable[None]]) -> None:
    asyncio.run(_opened(target, work))


def test_a_staged_upload_becomes_a_blob_readable_by_range(s3: S3Target) -> None:
    data = os.urandom(9 * MiB + 12345)
    digest = _digest(data)

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("u1")
        written, stage = await store.stage_append("u1", stage, 0, _chunks(data[: 3 * MiB], data[3 * MiB :]))
        assert written == len(data)
        assert [upload async for upload, _ in store.staged()] == ["u1"]
        assert await _collect(store.stage_read("u1", stage, len(data))) == data
        assert await _collect(store.stage_read("u1", stage, 100)) == data[:100]
        assert await store.stat(digest) is None
        await store.stage_commit("u1", stage, len(data), digest)
        info = await store.stat(digest)
        assert info is not None
        assert info.size == len(data)
        assert abs(info.modified - time.time()) < 60
        assert await _collect(store.read(digest)) == data
        for offset, length in [
            (0, 1),
            (5 * MiB - 1, 2),
            (8 * MiB - 3, MiB + 7),
            (len(data) - 1, 1),
            (17, None),
        ]:
            end = None if length is None else offset + length
            assert await _collect(store.read(digest, offset, length)) == data[offset:end], (offset, length)
        assert await _collect(store.read(digest, 100, 0)) == b""
        assert [d async for d, _ in store.digests()] == [digest]
        assert [upload async for upload, _ in store.staged()] == []
        await store.delete(digest)
        await store.delete(digest)
        assert await store.stat(digest) is None
        with pytest.raises(FileNotFoundError):
            await _collect(store.read(digest))

    run(s3, work)
    assert s3.keys() == []


def test_small_chunks_combine_into_parts_across_store_restarts(s3: S3Target) -> None:
    """Eleven 1 MiB PATCHes, then 7 MiB, then a small closing part, each through a new store
    object: the whole state is the recorded ``stage``; no part but the last is below 5 MiB."""
    chunks = [os.urandom(MiB) for _ in range(11)] + [os.urandom(7 * MiB), os.urandom(300_000)]
    data = b"".join(chunks)

    async def work() -> None:
        stage, size = await _fresh(s3, S3BlobStore.stage_create, "small"), 0
        for chunk in chunks:
            written, stage = await _fresh(s3, S3BlobStore.stage_append, "small", stage, size, _chunks(chunk))
            assert written == len(chunk)
            size += written
            # Pieces absorbed into a part go with the next request: at most 4 live, 4 stale.
            assert sum("/piece-" in key for key in s3.keys("uploads/small/")) <= 8
        await _fresh(s3, S3BlobStore.stage_commit, "small", stage, size, _digest(data))
        assert await _fresh(s3, _read_all, _digest(data)) == data

    asyncio.run(work())
    assert s3.keys() == [f"registry/blobs/sha256/{_digest(data).encoded}"]
    assert s3.keys() == [f"registry/blobs/sha256/{_digest(data).encoded}"]
