"""The S3 blob store (``registry/storage/s3.py``) against a real SeaweedFS, and the SeaweedFS
fixture itself: what the shared backend suite cannot see (part sizes, restarts between
appends, presigned URLs, signatures, memory, a forward proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import botocore.exceptions
import httpx
import pytest

from client_servers import make_certificate, wait_for_port
from conftest import OCIKIT, REQUIRE_ALL, ServerProcess, free_port, require_tool, start_registry
from ocikit.registry.settings import load_settings
from ocikit.registry.storage import s3 as s3_module
from ocikit.registry.storage.base import StorageUnavailable
from ocikit.registry.storage.s3 import S3BlobStore
from ocikit.spec.digest import Digest
from registry_helpers import digest, error_codes, push_blob, push_image, repo_name
from s3_helpers import DISTRIBUTION_V3, start_distribution_s3, upload_rss
from seaweedfs import SeaweedFS, seaweedfs_fixture  # noqa: F401  (the seaweedfs fixture)
from tinyproxy import Tinyproxy, tinyproxy_fixture  # noqa: F401  (the tinyproxy fixture)


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
    #: Where the store reaches the server, when not at its own endpoint.
    endpoint: str | None = None

    def store(self) -> S3BlobStore:
        endpoint = self.endpoint or self.server.endpoint
        return S3BlobStore(self.bucket, self.prefix, endpoint=endpoint, region=self.server.region)

    def server_keys(self) -> list[str]:
        """Every key of the bucket, under any prefix."""
        listing = self.server.client().list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

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


def test_a_blob_url_is_signed_once_a_minute_for_the_blobs_asked_for_last(
    s3: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signing is most of a redirect's cost: a blob's URL is handed out again for a twentieth
    of its life, a minute at most (and signed for that much longer), for as many blobs as the
    store keeps."""
    monkeypatch.setattr(s3_module, "_URLS_KEPT", 2)
    first, second, third = (_digest(bytes([n])) for n in range(3))

    async def work(store: S3BlobStore) -> None:
        urls = {d: await store.url(d, expires=600) for d in (first, second, third)}
        assert "X-Amz-Expires=630" in urls[first]  # and handed out for a twentieth of that
        await asyncio.sleep(1.1)  # a URL signed now would carry another X-Amz-Date
        assert await store.url(third, expires=600) == urls[third]
        assert await store.url(second, expires=600) == urls[second]
        assert await store.url(first, expires=600) != urls[first]  # the oldest was let go

    run(s3, work)


def test_a_monolithic_upload_is_written_straight_to_its_blob(s3: S3Target) -> None:
    """With its destination known, a whole blob goes into a multipart upload at the blob's own
    key (no staging objects, no copy at the commit), invisible until committed."""
    data = os.urandom(12 * MiB + 7)
    digest = _digest(data)
    blob_key = f"{s3.prefix}/blobs/sha256/{digest.encoded}"

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("whole")
        written, stage = await store.stage_append("whole", stage, 0, _chunks(data), digest)
        assert written == len(data)
        assert s3.keys("uploads/") == [f"{s3.prefix}/uploads/whole/created"]
        pending = s3.server.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
        assert [upload["Key"] for upload in pending] == [blob_key]
        assert await store.stat(digest) is None
        with pytest.raises(ValueError, match="was written as"):
            await store.stage_commit("whole", stage, len(data), _digest(b"another blob"))
        await store.stage_commit("whole", stage, len(data), digest)
        assert await _collect(store.read(digest)) == data
        assert s3.keys("uploads/") == []

    run(s3, work)


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


def test_part_buffers_reused_across_a_long_request_keep_every_byte(s3: S3Target) -> None:
    """A piece left by a first request, then 23 MiB in chunks of odd sizes: the part buffers
    (one filling while the previous is sent, then reused) and the piece read back at the head
    of the first part must give back exactly the bytes sent, in order."""
    head = os.urandom(MiB + 1)
    body = os.urandom(23 * MiB + 4321)
    sizes = [777_777, 1, 3 * MiB + 5, 65_536, 12_345]
    chunks, offset = [], 0
    while offset < len(body):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(body[offset : offset + size])
        offset += size

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("reuse")
        written, stage = await store.stage_append("reuse", stage, 0, _chunks(head))
        assert (written, len(s3.keys("uploads/reuse/piece-"))) == (len(head), 1)
        written, stage = await store.stage_append("reuse", stage, len(head), _chunks(*chunks))
        assert written == len(body)
        # 24 MiB and 4322 bytes: one run of two 10 MiB parts and the rest, the piece in it.
        assert len(s3.keys("uploads/reuse/run-")) == 1
        data = head + body
        await store.stage_commit("reuse", stage, len(data), _digest(data))
        assert await _read_all(store, _digest(data)) == data

    run(s3, work)


def test_a_request_of_one_part_is_one_put_and_a_longer_one_a_multipart_upload(s3: S3Target) -> None:
    """A 5 MiB PATCH (Debian-sized pushes in 5 MiB chunks) stages one object with one PUT
    rather than a multipart upload's three requests; an S3 ETag tells the two apart (a
    multipart object's ends in -<parts>)."""
    one, two = os.urandom(6 * MiB), os.urandom(22 * MiB)

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("etag")
        _, stage = await store.stage_append("etag", stage, 0, _chunks(one))
        _, stage = await store.stage_append("etag", stage, len(one), _chunks(two))
        etags = [
            s3.server.client().head_object(Bucket=s3.bucket, Key=key)["ETag"]
            for key in s3.keys("uploads/etag/run-")
        ]
        assert sorted("-" in etag for etag in etags) == [False, True]
        data = one + two
        await store.stage_commit("etag", stage, len(data), _digest(data))
        assert await _read_all(store, _digest(data)) == data

    run(s3, work)


def test_a_blob_sent_in_one_request_is_one_staging_object(s3: S3Target) -> None:
    """A blob streamed in one request of unknown digest (skopeo's PATCH) is staged as one run,
    which the commit copies whole, once; a short second request leaves a piece after it."""
    data, tail = os.urandom(12 * MiB + 5), os.urandom(1000)

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("one")
        written, stage = await store.stage_append("one", stage, 0, _chunks(data[:MiB], data[MiB:]))
        assert written == len(data)
        assert [key.rpartition("/")[2][:4] for key in s3.keys("uploads/one/")] == ["crea", "run-"]
        assert s3.server.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
        assert await _collect(store.stage_read("one", stage, len(data))) == data
        _, stage = await store.stage_append("one", stage, len(data), _chunks(tail))
        assert len(s3.keys("uploads/one/piece-")) == 1
        whole = data + tail
        await store.stage_commit("one", stage, len(whole), _digest(whole))
        assert await _read_all(store, _digest(whole)) == whole

    run(s3, work)
    assert s3.keys("uploads/") == []


def test_staging_objects_beyond_the_largest_part_are_copied_in_ranges(
    s3: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run larger than S3's largest part (5 GiB; 10 MiB here) is published by copies of
    ranges, each above the smallest part, whether it is the only object staged or not."""
    monkeypatch.setattr(s3_module, "_MAX_PART", 10 * MiB)
    big, more = os.urandom(23 * MiB + 1), os.urandom(6 * MiB)
    spans = [span.partition("=")[2].split("-") for span in s3_module._copy_ranges(len(big)) if span]
    sizes = [int(last) - int(first) + 1 for first, last in spans]
    assert (len(sizes), sum(sizes)) == (3, len(big))
    assert 5 * MiB <= min(sizes) <= max(sizes) <= 10 * MiB

    async def work(store: S3BlobStore) -> None:
        for upload_id, requests in (("alone", [big]), ("then", [big, more])):
            stage, size = await store.stage_create(upload_id), 0
            for body in requests:
                written, stage = await store.stage_append(upload_id, stage, size, _chunks(body))
                size += written
            data = b"".join(requests)
            await store.stage_commit(upload_id, stage, size, _digest(data))
            assert await _read_all(store, _digest(data)) == data

    run(s3, work)
    assert s3.keys("uploads/") == []


def test_a_run_cut_off_by_a_crash_is_aborted_with_its_upload(s3: S3Target) -> None:
    """A replica killed in the middle of a long request leaves the run's multipart upload
    unfinished: invisible, but holding storage until the upload is removed. A commit leaves
    it (finding it costs a listing), and the upload stays listed as staged for the purge."""
    client, data = s3.server.client(), os.urandom(MiB)
    key = f"{s3.prefix}/uploads/cut/run-left-by-a-crash"

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("cut")
        started = client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
        client.upload_part(
            Bucket=s3.bucket, Key=key, UploadId=started, PartNumber=1, Body=os.urandom(5 * MiB)
        )
        _, stage = await store.stage_append("cut", stage, 0, _chunks(data))
        await store.stage_commit("cut", stage, len(data), _digest(data))
        assert s3.keys("uploads/") == []
        assert [upload_id async for upload_id, _ in store.staged()] == ["cut"]
        await store.stage_abort("cut", None)
        assert [upload_id async for upload_id, _ in store.staged()] == []

    run(s3, work)
    assert client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_a_run_a_crash_left_outlives_the_commit_until_the_purge(s3: S3Target, tmp_path: Path) -> None:
    """The closing PUT does not list unfinished multipart uploads (a request each, tens of
    milliseconds on AWS): a run a crash cut off stays listed as staged after the commit, and
    the purge of abandoned uploads aborts it."""
    client, name, layer = s3.server.client(), repo_name(), os.urandom(MiB)
    server = _serve_on(s3, tmp_path / "data", "--upload-expiry", "1")
    try:
        with server.client() as registry:
            location = registry.post(f"/v2/{name}/blobs/uploads/").headers["location"]
            upload_id = location.partition("?")[0].rsplit("/", 1)[1]
            key = f"{s3.prefix}/uploads/{upload_id}/run-left-by-a-crash"
            started = client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
            client.upload_part(Bucket=s3.bucket, Key=key, UploadId=started, PartNumber=1, Body=layer)
            done = registry.put(location, params={"digest": digest(layer)}, content=layer)
            assert done.status_code == 201, done.text
            assert s3.keys("uploads/") == []
            deadline = time.monotonic() + 20
            while client.list_multipart_uploads(Bucket=s3.bucket, Prefix=key).get("Uploads"):
                assert time.monotonic() < deadline, "the purge left the run unfinished"
                time.sleep(0.25)
            assert registry.get(f"/v2/{name}/blobs/{digest(layer)}", follow_redirects=True).content == layer
    finally:
        server.stop()


class _ClientVanished(Exception):
    pass


async def _failing(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise _ClientVanished


def test_a_failed_or_overtaken_append_never_changes_the_recorded_upload(s3: S3Target) -> None:
    """A request that dies after writing parts, and a request whose lease was taken over (it
    appends from the same recorded stage as its successor), leave the recorded upload as it
    was; what they wrote is removed with the upload."""
    first, lost, second = os.urandom(2 * MiB), os.urandom(10 * MiB), os.urandom(9 * MiB)

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("crash")
        _, stage = await store.stage_append("crash", stage, 0, _chunks(first))
        with pytest.raises(_ClientVanished):
            await store.stage_append("crash", stage, len(first), _failing(lost[:MiB], lost[MiB:]))
        overtaken = await store.stage_append("crash", stage, len(first), _chunks(lost))
        written, recorded = await store.stage_append("crash", stage, len(first), _chunks(second))
        assert overtaken[1] != recorded
        assert written == len(second)
        data = first + second
        assert await _collect(store.stage_read("crash", recorded, len(data))) == data
        await store.stage_commit("crash", recorded, len(data), _digest(data))
        assert await _collect(store.read(_digest(data))) == data

    run(s3, work)
    assert s3.keys("uploads/") == []


def test_commit_of_a_stored_digest_and_abort_release_the_staging(s3: S3Target) -> None:
    data = os.urandom(6 * MiB)

    async def upload(store: S3BlobStore, upload_id: str) -> bytes:
        stage = await store.stage_create(upload_id)
        return (await store.stage_append(upload_id, stage, 0, _chunks(data)))[1]

    async def work(store: S3BlobStore) -> None:
        for upload_id in ("one", "two"):
            await store.stage_commit(upload_id, await upload(store, upload_id), len(data), _digest(data))
        assert await _collect(store.read(_digest(data))) == data
        stage = await upload(store, "three")
        await store.stage_abort("three", stage)
        await upload(store, "four")
        assert [upload_id async for upload_id, _ in store.staged()] == ["four"]
        await store.stage_abort("four", None)  # the session record was lost
        await store.stage_abort("never-staged", None)
        empty = await store.stage_create("empty")
        await store.stage_commit("empty", empty, 0, _digest(b""))
        assert await _collect(store.read(_digest(b""))) == b""

    run(s3, work)
    assert s3.keys("uploads/") == []
    assert len(s3.keys("blobs/")) == 2


def test_hostile_upload_ids_and_inconsistent_states_are_refused(s3: S3Target) -> None:
    async def work(store: S3BlobStore) -> None:
        for upload_id in ("../blobs", "a/b", "", "x" * 129, "a b", "..", "é"):
            with pytest.raises(ValueError, match="invalid upload id"):
                await store.stage_create(upload_id)
            with pytest.raises(ValueError, match="invalid upload id"):
                await store.stage_abort(upload_id, None)
        stage = await store.stage_create("ok")
        with pytest.raises(ValueError, match="holds 0 bytes"):
            await store.stage_append("ok", stage, 5, _chunks(b"x"))
        with pytest.raises(ValueError, match="not an S3 staging state"):
            await store.stage_append("ok", b"\x93garbage", 0, _chunks(b"x"))
        with pytest.raises(ValueError, match="holds 0 bytes"):
            await store.stage_commit("ok", stage, 1, _digest(b"x"))
        await store.stage_abort("ok", stage)

    run(s3, work)
    assert s3.keys() == []


def test_presigned_urls_serve_the_blob_to_a_plain_client_and_expire(s3: S3Target) -> None:
    data = os.urandom(300_000)
    urls: dict[str, str] = {}

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("url")
        _, stage = await store.stage_append("url", stage, 0, _chunks(data))
        await store.stage_commit("url", stage, len(data), _digest(data))
        urls["long"] = str(await store.url(_digest(data), expires=300))
        urls["short"] = str(await store.url(_digest(data), expires=1))
        assert store.local_path(_digest(data)) is None

    run(s3, work)
    answer = httpx.get(urls["long"])
    assert answer.status_code == 200
    assert answer.content == data
    ranged = httpx.get(urls["long"], headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == data[10:20]
    tampered = urls["long"].replace(_digest(data).encoded, _digest(b"other").encoded)
    assert httpx.get(tampered).status_code == 403
    time.sleep(2.1)
    assert httpx.get(urls["short"]).status_code == 403


def test_access_problems_are_one_line_storage_errors(s3: S3Target, monkeypatch: pytest.MonkeyPatch) -> None:
    def opening(store: S3BlobStore) -> str:
        with pytest.raises(StorageUnavailable) as refused:
            asyncio.run(store.open())
        message = str(refused.value)
        assert message.startswith("S3 object storage is unavailable: ")
        assert "\n" not in message
        return message

    server = s3.server
    assert "does not exist" in opening(
        S3BlobStore("no-such-bucket", "", endpoint=server.endpoint, region=None)
    )
    assert "cannot connect" in opening(
        S3BlobStore(s3.bucket, "", endpoint=f"http://127.0.0.1:{free_port()}", region=None)
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    assert "access denied" in opening(s3.store())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDNOBODY")
    assert "access denied" in opening(s3.store())


def test_a_large_upload_keeps_constant_memory(s3: S3Target) -> None:
    """256 MiB streamed in one request and 64 MiB in 5 MiB requests (as skopeo sends them):
    the uploading process grows by three 5 MiB parts' worth (one filling, one being sent and
    the HTTP client's copy of it: 18 MiB measured) and some slack, far below the data (the
    benchmark uploads 4 GiB)."""
    streamed = upload_rss(s3.server, s3.bucket, 256 * MiB)
    chunked = upload_rss(s3.server, s3.bucket, 64 * MiB, request=5 * MiB)
    for result in (streamed, chunked):
        assert result["peak_rss_mib"] - result["rss_before_mib"] < 32, result
    assert s3.keys() == []


def test_the_s3_client_holds_its_service_model_without_documentation() -> None:
    """What each worker's S3 client keeps for its lifetime: botocore's model as plain dicts,
    its documentation emptied (four fifths of S3's model). A botocore that stopped loading
    files through the store's loader would fail here rather than silently cost memory."""
    from ocikit.registry.storage.s3 import _model_loader

    model = _model_loader().load_service_model("s3", "service-2")
    assert type(model) is dict
    put_object = model["operations"]["PutObject"]
    assert put_object["http"]["method"] == "PUT"
    assert put_object["documentation"] == ""
    assert all(not shape.get("documentation") for shape in model["shapes"].values())


def test_an_unreachable_object_store_is_unavailable_then_recovers(s3: S3Target) -> None:
    data = os.urandom(1000)

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("outage")
        _, stage = await store.stage_append("outage", stage, 0, _chunks(data))
        s3.server.halt()
        try:
            for attempt in (
                store.stat(_digest(data)),
                store.stage_commit("outage", stage, len(data), _digest(data)),
            ):
                with pytest.raises(StorageUnavailable, match=r"^S3 object storage is unavailable: "):
                    await attempt
        finally:
            s3.server.restart()
        await store.stage_commit("outage", stage, len(data), _digest(data))
        assert await _collect(store.read(_digest(data))) == data

    run(s3, work)


# ---------------------------------------------------------------- behind a forward proxy

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def _behind(
    monkeypatch: pytest.MonkeyPatch, proxy: str, *, variable: str = "HTTP_PROXY", no_proxy: str | None = None
) -> None:
    """The environment of a user whose ``variable`` is ``proxy``: both spellings of each
    variable (urllib and botocore read either), nothing inherited from the caller's."""
    for name in _PROXY_VARIABLES:
        for spelling in (name, name.lower()):
            monkeypatch.delenv(spelling, raising=False)
            if name == variable:
                monkeypatch.setenv(spelling, proxy)
            elif name == "NO_PROXY" and no_proxy is not None:
                monkeypatch.setenv(spelling, no_proxy)


def _store_and_read_back(s3: S3Target, data: bytes) -> None:
    """A store opens, stages ``data`` and commits it as a blob, whose stat and read answer it."""
    digest = _digest(data)

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("proxied")
        _, stage = await store.stage_append("proxied", stage, 0, _chunks(data))
        await store.stage_commit("proxied", stage, len(data), digest)
        info = await store.stat(digest)
        assert info is not None
        assert info.size == len(data)
        assert await _read_all(store, digest) == data

    run(s3, work)


def _through(proxy: Tinyproxy, s3: S3Target) -> list[tuple[str, str]]:
    """(method, key) of each request for the test's bucket that went through ``proxy``."""
    bucket = f"/{s3.bucket}"
    return [
        (method, target.path.removeprefix(bucket).lstrip("/"))
        for method, target in proxy.requests()
        if f"{target.scheme}://{target.netloc}" == s3.server.endpoint and target.path.startswith(bucket)
    ]


def _blob_key(s3: S3Target, data: bytes) -> str:
    return f"{s3.prefix}/blobs/sha256/{hashlib.sha256(data).hexdigest()}"


def test_every_request_of_the_store_goes_through_the_http_proxy(
    s3: S3Target, tinyproxy: Callable[..., Tinyproxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy, the presigned HEAD of ``stat`` (plain aiohttp) goes where botocore's
    requests go. A blob of a part and a bit: bodies big enough for a part go through too
    (botocore's "Expect: 100-continue" held them at tinyproxy until the read timeout)."""
    proxy = tinyproxy()
    _behind(monkeypatch, proxy.url())
    data = os.urandom(s3_module._STREAM_PART + 1000)
    _store_and_read_back(s3, data)
    through = _through(proxy, s3)
    blob = _blob_key(s3, data)
    assert ("HEAD", blob) in through  # stat
    assert ("GET", blob) in through  # read
    assert ("GET", "") in through  # open's check of the bucket
    staged = [key for method, key in through if method == "PUT" and key.startswith(f"{s3.prefix}/uploads/")]
    assert len(staged) >= 3, through  # created, the run's two parts
    assert any(key == blob and method in ("PUT", "POST") for method, key in through), through  # commit


def test_proxy_credentials_in_the_url_are_sent_and_a_refusal_is_one_line(
    s3: S3Target, tinyproxy: Callable[..., Tinyproxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = ("ocikit", "pa-ss_w.rd")  # tinyproxy's configuration admits no more signs
    proxy = tinyproxy(credentials=credentials)
    _behind(monkeypatch, proxy.url(credentials))
    data = os.urandom(70_000)
    _store_and_read_back(s3, data)
    assert ("HEAD", _blob_key(s3, data)) in _through(proxy, s3)

    def refused(url: str) -> str:
        _behind(monkeypatch, url)
        with pytest.raises(StorageUnavailable) as failure:
            asyncio.run(s3.store().open())
        return str(failure.value)

    for url, status in [(proxy.url(("ocikit", "wrong-password")), 401), (proxy.url(), 407)]:
        assert refused(url) == (
            f"S3 object storage is unavailable: the proxy refused the request (HTTP {status}): "
            "check the user and password in HTTPS_PROXY or HTTP_PROXY"
        )


def test_a_proxy_that_stops_accepting_the_credentials_fails_stat_in_one_line(
    s3: S3Target, tinyproxy: Callable[..., Tinyproxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's password changes while a replica runs: its next stat is a one-line storage
    error naming the proxy, never the presigned URL (whose signature a log would keep).
    tinyproxy follows its 401 to a HEAD with a page, which the HTTP parser refuses when both
    arrive in one packet (mostly): either reason is a fair one."""
    proxy = tinyproxy(credentials=("ocikit", "before"))
    _behind(monkeypatch, proxy.url(("ocikit", "before")))
    data = os.urandom(1000)

    async def work(store: S3BlobStore) -> None:
        stage = await store.stage_create("rotated")
        _, stage = await store.stage_append("rotated", stage, 0, _chunks(data))
        await store.stage_commit("rotated", stage, len(data), _digest(data))
        assert await store.stat(_digest(data)) is not None
        proxy.stop()
        rotated = tinyproxy(credentials=("ocikit", "after"), port=proxy.port)
        with pytest.raises(StorageUnavailable) as failure:
            await store.stat(_digest(data))
        assert ("HEAD", _blob_key(s3, data)) in _through(rotated, s3)
        refused = re.escape(
            "the proxy refused the request (HTTP 401): "
            "check the user and password in HTTPS_PROXY or HTTP_PROXY"
        )
        broken = r"an invalid HTTP response \([^\n]*\)" + re.escape(
            f" through the proxy 127.0.0.1:{proxy.port}"
        )
        message = str(failure.value)
        assert re.fullmatch(f"S3 object storage is unavailable: ({refused}|{broken})", message), message
        assert "Signature" not in message
        assert s3.bucket not in message

    run(s3, work)


def test_no_proxy_sends_the_store_straight_to_the_object_store(
    s3: S3Target, tinyproxy: Callable[..., Tinyproxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = tinyproxy()
    _behind(monkeypatch, proxy.url(), no_proxy="127.0.0.1")
    _store_and_read_back(s3, os.urandom(70_000))
    assert proxy.requests() == []
    _behind(monkeypatch, proxy.url())  # the proxy does serve when not bypassed
    _store_and_read_back(s3, os.urandom(1000))
    assert proxy.requests() != []


@contextlib.contextmanager
def _haproxy_in_front(s3: S3Target, config: Path, bind: str, *rules: str) -> Iterator[int]:
    """HAProxy on a free loopback port (yielded) in front of the SeaweedFS: ``bind``'s options
    after the address, ``rules`` in the frontend."""
    haproxy = require_tool("haproxy", "an endpoint in front of SeaweedFS")
    port, backend = free_port(), s3.server.endpoint.removeprefix("http://")
    frontend = "".join(f"  {rule}\n" for rule in rules)
    config.write_text(
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend s3\n  bind 127.0.0.1:{port}{bind}\n{frontend}  default_backend seaweedfs\n"
        f"backend seaweedfs\n  server s0 {backend}\n"
    )
    front = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, front)
        yield port
    finally:
        front.terminate()
        front.wait(timeout=10)


@pytest.fixture
def tls_s3(s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Target]:
    """The test's bucket behind an HTTPS endpoint, as AWS S3 is: HAProxy terminating TLS in
    front of the SeaweedFS, its self-signed certificate trusted through AWS_CA_BUNDLE."""
    key, cert = make_certificate(tmp_path, "s3")
    bundle = tmp_path / "s3.pem"
    bundle.write_text(cert.read_text() + key.read_text())
    with _haproxy_in_front(s3, tmp_path / "haproxy.cfg", f" ssl crt {bundle}") as port:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        yield S3Target(s3.server, s3.bucket, endpoint=f"https://127.0.0.1:{port}")


def test_a_store_refusing_presigned_requests_stops_the_start_with_the_region_named(
    s3: S3Target, tmp_path: Path
) -> None:
    """AWS answers 400 to a presigned request signed for another region than the bucket's, and
    presigned requests get no region redirect, unlike botocore's own: the store sends one at
    start. Here HAProxy in front of SeaweedFS answers every HEAD so."""
    rule = "http-request return status 400 if METH_HEAD"
    with _haproxy_in_front(s3, tmp_path / "haproxy.cfg", "", rule) as port:
        store = S3Target(s3.server, s3.bucket, endpoint=f"http://127.0.0.1:{port}").store()
        with pytest.raises(StorageUnavailable) as failure:
            asyncio.run(store.open())
    assert str(failure.value) == (
        "S3 object storage is unavailable: HTTP 400 to a presigned HEAD: is s3_region the bucket's region?"
    )


def test_an_https_endpoint_is_tunnelled_through_the_proxy_with_its_credentials(
    tls_s3: S3Target, tinyproxy: Callable[..., Tinyproxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY with credentials: every connection, stat's own included, is a CONNECT that
    carries them (the request inside the tunnel is encrypted, the proxy never reads it)."""
    credentials = ("ocikit", "tunnel-pass")
    proxy = tinyproxy(credentials=credentials)
    _behind(monkeypatch, proxy.url(credentials), variable="HTTPS_PROXY")
    data = os.urandom(70_000)
    tunnel = ("CONNECT", tls_s3.endpoint.removeprefix("https://"))

    def tunnels() -> int:
        return sum((method, target.path) == tunnel for method, target in proxy.requests())

    async def work(store: S3BlobStore) -> None:
        # Opening tunnels twice: for botocore, and for the presigned HEAD that checks the
        # region, whose connection stat then reuses.
        assert tunnels() == 2
        assert await store.stat(_digest(data)) is None
        assert tunnels() == 2
        stage = await store.stage_create("tunnelled")
        _, stage = await store.stage_append("tunnelled", stage, 0, _chunks(data))
        await store.stage_commit("tunnelled", stage, len(data), _digest(data))
        info = await store.stat(_digest(data))
        assert info is not None
        assert info.size == len(data)
        assert await _read_all(store, _digest(data)) == data

    run(tls_s3, work)
    assert [method for method, _ in proxy.requests()] == ["CONNECT"] * tunnels()
    _behind(monkeypatch, proxy.url(("ocikit", "wrong-password")), variable="HTTPS_PROXY")
    with pytest.raises(StorageUnavailable) as failure:
        asyncio.run(tls_s3.store().open())
    assert str(failure.value) == (
        "S3 object storage is unavailable: the proxy refused the request (HTTP 401): "
        "check the user and password in HTTPS_PROXY or HTTP_PROXY"
    )


# ---------------------------------------------------------------- ocikit serve on S3


def _serve_on(s3: S3Target, root: Path, *extra: str) -> ServerProcess:
    storage = f"s3://{s3.bucket}/{s3.prefix}"
    return start_registry(root, extra=["--storage", storage, "--s3-endpoint", s3.server.endpoint, *extra])


def test_ocikit_serve_on_s3_redirects_blob_gets_to_the_object_store(s3: S3Target, tmp_path: Path) -> None:
    """Chunked push of small and large PATCHes, manifest, then pulls: blob GETs answer 307 to
    a presigned URL (no replica carries the bytes), which a plain client follows."""
    server = _serve_on(s3, tmp_path / "data")
    name, layer = repo_name(), os.urandom(9 * MiB + 3)
    try:
        with server.client() as client:
            started = client.post(f"/v2/{name}/blobs/uploads/")
            assert started.status_code == 202
            location = started.headers["location"]
            for start, end in [(0, MiB), (MiB, 2 * MiB), (2 * MiB, 9 * MiB), (9 * MiB, len(layer))]:
                sent = client.patch(
                    location,
                    content=layer[start:end],
                    headers={
                        "content-range": f"{start}-{end - 1}",
                        "content-type": "application/octet-stream",
                    },
                )
                assert sent.status_code == 202, sent.text
                location = sent.headers["location"]
            done = client.put(location, params={"digest": digest(layer)})
            assert done.status_code == 201, done.text
            manifest_digest, _ = push_image(client, name, tag="v1")
            blob = client.get(f"/v2/{name}/blobs/{digest(layer)}")
            assert blob.status_code == 307
            target = blob.headers["location"]
            assert target.startswith(s3.server.endpoint + f"/{s3.bucket}/{s3.prefix}/blobs/sha256/")
            assert httpx.get(target).content == layer
            # SigV4, as AWS (since 2020), Cloudflare R2 and Backblaze B2 accept no SigV2 URL.
            signed = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))
            assert signed["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
            assert signed["X-Amz-Credential"].split("/")[2] == s3.server.region
            assert signed["X-Amz-Expires"] == "1260"  # 20 minutes, and the minute it is handed out
            assert httpx.get(target.replace("X-Amz-Expires=1260", "X-Amz-Expires=9999")).status_code == 403
            assert client.get(f"/v2/{name}/blobs/{digest(layer)}").headers["location"] == target
            assert client.head(f"/v2/{name}/blobs/{digest(layer)}").headers["content-length"] == str(
                len(layer)
            )
            assert client.get(f"/v2/{name}/manifests/{manifest_digest}").status_code == 200
        # On S3 a replica runs one worker unless told otherwise: the deployment grows by
        # replicas, and each worker holds an S3 client of its own.
        main = server.process.pid
        assert ", 1 worker(s)" in server.log.read_text()
        assert len(Path(f"/proc/{main}/task/{main}/children").read_text().split()) == 1
    finally:
        server.stop()
    assert s3.keys("uploads/") == []


def test_a_blob_lost_from_the_bucket_is_unknown_to_pushers_and_streamed_reads(
    s3: S3Target, tmp_path: Path
) -> None:
    """An object deleted behind the registry's back: HEAD and a streamed GET say BLOB_UNKNOWN,
    so the next pusher sends it again; a redirect is answered from the registry's record and
    the store itself says 404; the push that follows heals it."""
    name, layer = repo_name(), os.urandom(1000)
    path = f"/v2/{name}/blobs/{digest(layer)}"
    server = _serve_on(s3, tmp_path / "data")
    try:
        with server.client() as client:
            push_blob(client, name, layer)
            assert httpx.get(client.get(path).headers["location"]).content == layer
            (key,) = s3.keys("blobs/")
            s3.server.client().delete_object(Bucket=s3.bucket, Key=key)
            assert client.head(path).status_code == 404
            redirected = client.get(path)
            assert redirected.status_code == 307
            assert httpx.get(redirected.headers["location"]).status_code == 404
    finally:
        server.stop()
    server = _serve_on(s3, tmp_path / "data", "--blob-redirect", "false")
    try:
        with server.client() as client:
            lost = client.get(path)
            assert (lost.status_code, error_codes(lost)) == (404, ["BLOB_UNKNOWN"])
            push_blob(client, name, layer)
            assert client.get(path).content == layer
    finally:
        server.stop()


def test_a_monolithic_upload_cut_short_leaves_nothing_and_a_retry_succeeds(
    s3: S3Target, tmp_path: Path
) -> None:
    """The client announces 12 MiB, sends 7 and hangs up: the multipart upload written straight
    to the blob's key is aborted, nothing is visible, and the upload starts again from 0."""
    server = _serve_on(s3, tmp_path / "data")
    name, layer = repo_name(), os.urandom(12 * MiB)
    try:
        with server.client() as client:
            location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
            host, port = server.host.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(
                    f"PUT {location}{'&' if '?' in location else '?'}digest={digest(layer)} HTTP/1.1\r\n"
                    f"Host: registry\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {len(layer)}\r\n\r\n".encode()
                )
                sock.sendall(layer[: 7 * MiB])
            deadline = time.monotonic() + 10
            while s3.server.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads"):
                assert time.monotonic() < deadline, "the multipart upload was not aborted"
                time.sleep(0.1)
            assert client.head(f"/v2/{name}/blobs/{digest(layer)}").status_code == 404
            status = client.get(location)
            assert status.status_code == 204, status.text
            assert status.headers["range"] == "0-0"  # empty, as distribution reports it
            done = client.put(location, params={"digest": digest(layer)}, content=layer)
            assert done.status_code == 201, done.text
            assert client.get(f"/v2/{name}/blobs/{digest(layer)}", follow_redirects=True).content == layer
    finally:
        server.stop()


def test_a_closing_put_refused_after_its_body_leaves_no_multipart_upload(
    s3: S3Target, tmp_path: Path
) -> None:
    """A monolithic body is written straight to its blob's key; refused after it arrived (its
    Content-Range promised more), it is aborted, since no later request could find it."""
    server = _serve_on(s3, tmp_path / "data")
    name, layer = repo_name(), os.urandom(7 * MiB)
    try:
        with server.client() as client:
            location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
            promised = {"content-range": f"0-{12 * MiB - 1}", "content-type": "application/octet-stream"}
            refused = client.put(location, params={"digest": digest(layer)}, content=layer, headers=promised)
            assert refused.status_code == 400, refused.text
            assert s3.server.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
            assert client.head(f"/v2/{name}/blobs/{digest(layer)}").status_code == 404
            done = client.put(location, params={"digest": digest(layer)}, content=layer)
            assert done.status_code == 201, done.text
    finally:
        server.stop()


def test_workers_default_to_one_on_s3_and_to_the_cpus_elsewhere() -> None:
    assert load_settings({"storage": "s3://bucket/prefix"}, environ={}).workers == 1
    assert load_settings({}, environ={"OCIKIT_STORAGE": "s3://bucket"}).workers == 1
    assert load_settings({"storage": "s3://bucket", "workers": "3"}, environ={}).workers == 3
    assert load_settings({}, environ={}).workers == len(os.sched_getaffinity(0))
    assert load_settings({"storage": "file:///srv/registry"}, environ={}).workers == len(
        os.sched_getaffinity(0)
    )


def test_ocikit_serve_on_s3_streams_blobs_with_ranges_without_redirects(s3: S3Target, tmp_path: Path) -> None:
    server = _serve_on(s3, tmp_path / "data", "--blob-redirect", "false")
    name, layer = repo_name(), os.urandom(6 * MiB + 11)
    try:
        with server.client() as client:
            push_blob(client, name, layer)
            whole = client.get(f"/v2/{name}/blobs/{digest(layer)}")
            assert whole.status_code == 200
            assert whole.content == layer
            part = client.get(f"/v2/{name}/blobs/{digest(layer)}", headers={"range": "bytes=5242870-5242899"})
            assert part.status_code == 206
            assert part.content == layer[5242870:5242900]
    finally:
        server.stop()


def test_ocikit_serve_refuses_bad_s3_credentials_in_one_line(
    s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = f"s3://{s3.bucket}/x"
    refused = subprocess.run(
        [*OCIKIT, "serve", "--listen", "127.0.0.1:1", "--root", str(tmp_path), "--storage", storage,
         "--s3-endpoint", s3.server.endpoint],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "S3 object storage" in refused.stderr
    assert "not-the-secret" not in refused.stderr


def test_distribution_v3_runs_on_the_same_seaweedfs(s3: S3Target, tmp_path: Path) -> None:
    """The benchmark's reference (tests/s3_helpers.py): distribution v3.1.1 with its own s3
    driver stores a pushed blob in the bucket and redirects its GET to a presigned URL."""
    if not os.access(DISTRIBUTION_V3, os.X_OK):
        (pytest.fail if REQUIRE_ALL else pytest.skip)(f"CNCF distribution v3 is not at {DISTRIBUTION_V3}")
    distribution = start_distribution_s3(s3.server, tmp_path, s3.bucket)
    layer = os.urandom(100_000)
    try:
        with httpx.Client(base_url=distribution.url, timeout=60) as client:
            location = client.post("/v2/bench/app/blobs/uploads/").headers["location"]
            done = client.put(f"{location}&digest={digest(layer)}", content=layer)
            assert done.status_code == 201, done.text
            redirected = client.get(f"/v2/bench/app/blobs/{digest(layer)}")
            assert redirected.status_code == 307
            assert httpx.get(redirected.headers["location"]).content == layer
    finally:
        distribution.stop()
    assert any(key.endswith(f"/{digest(layer).split(':')[1]}/data") for key in s3.server_keys())
