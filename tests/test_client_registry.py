"""ocikit.client against real registries: ``ocikit serve`` and CNCF distribution, with skopeo as
an independent reader, a proxy that breaks connections, a redirect to another host and a
registry that lies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from client_servers import (
    CuttingProxy,
    Distribution,
    LyingRegistry,
    RedirectingRegistry,
    chunks_of,
    fixed,
    sha256,
    start_distribution,
    truncated,
)
from conftest import ServerProcess, require_tool, start_registry
from ocikit.client import (
    ClientOptions,
    RegistryDestination,
    RegistrySource,
    UploadLost,
    open_destination,
    open_source,
)
from ocikit.client.errors import AuthenticationError, RegistryError, RegistryNotFound
from ocikit.spec import Descriptor, VerificationError, mediatype, parse_reference
from ocikit.store.copy import copy_image
from ocikit.store.layout import OCILayout
from ocikit.store.transport import ImageDestination, ImageSource, MountsBlobs, TransportError
from store_helpers import build_image, write_layout

T = TypeVar("T")
MiB = 1 << 20


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


async def feed(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for chunk in chunks_of(data, size):
        yield chunk


async def read_all(source: RegistrySource, descriptor: Descriptor) -> bytes:
    return b"".join([chunk async for chunk in source.open_blob(descriptor)])


def repo() -> str:
    return f"client/{uuid.uuid4().hex[:10]}"


def layer_descriptor(data: bytes) -> Descriptor:
    return Descriptor(media_type=mediatype.OCI_LAYER_GZIP, digest=sha256(data), size=len(data))


async def push_image(
    destination: RegistryDestination, layers: list[bytes], tags: list[str], **manifest_extra: Any
) -> tuple[Descriptor, bytes]:
    """Push config + layers + manifest; returns the manifest's descriptor and bytes."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    config_bytes = config.encode()
    config_descriptor = Descriptor(
        media_type=mediatype.OCI_CONFIG, digest=sha256(config_bytes), size=len(config_bytes)
    )
    descriptors = [layer_descriptor(layer) for layer in layers]
    for descriptor, data in [(config_descriptor, config_bytes), *zip(descriptors, layers, strict=True)]:
        if not await destination.has_blob(descriptor):
            await destination.put_blob(descriptor, feed(data))
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatype.OCI_MANIFEST,
        "config": {
            "mediaType": config_descriptor.media_type,
            "digest": config_descriptor.digest,
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d in descriptors],
        **manifest_extra,
    }
    raw = json.dumps(manifest, indent=2).encode()  # indented: byte-exactness is visible
    descriptor = Descriptor(media_type=mediatype.OCI_MANIFEST, digest=sha256(raw), size=len(raw))
    await destination.put_manifest(descriptor, raw, tags)
    return descriptor, raw


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    server = start_distribution(tmp_path_factory.mktemp("distribution"))
    yield server
    server.stop()


@pytest.fixture(params=["ocikit", "distribution"])
def any_registry(request: pytest.FixtureRequest) -> str:
    """The host:port of ``ocikit serve`` or of CNCF distribution."""
    if request.param == "ocikit":
        server: ServerProcess = request.getfixturevalue("registry")
        return server.host
    return str(request.getfixturevalue("distribution").host)


def test_the_transports_satisfy_the_protocols(registry: ServerProcess) -> None:
    source = open_source(f"{registry.host}/x/y:1")
    destination = open_destination(f"{registry.host}/x/y:1")
    assert isinstance(source, ImageSource)
    assert isinstance(destination, ImageDestination)
    run(source.close())
    run(destination.close())


def test_push_then_pull_multi_layer_image_byte_for_byte(any_registry: str) -> None:
    name = repo()
    layers = [os.urandom(size) for size in (1000, 3 * MiB, 9 * MiB + 17)]  # monolithic and chunked

    async def scenario() -> None:
        destination = RegistryDestination(parse_reference(f"{any_registry}/{name}:v1"), chunk_size=4 * MiB)
        descriptor, raw = await push_image(destination, layers, ["v1", "stable"])
        assert await destination.has_blob(descriptor)
        await destination.close()
        source = open_source(f"{any_registry}/{name}:stable")
        try:
            resolved = await source.resolve(None)
            assert resolved.digest == descriptor.digest
            assert resolved.size == descriptor.size
            assert resolved.media_type == mediatype.OCI_MANIFEST
            assert await source.fetch_manifest(resolved) == raw
            manifest = json.loads(raw)
            for entry, data in zip(manifest["layers"], layers, strict=True):
                layer = Descriptor(media_type=entry["mediaType"], digest=entry["digest"], size=entry["size"])
                assert await read_all(source, layer) == data
            assert sorted(await source.tags()) == ["stable", "v1"]
            by_digest = await source.resolve(descriptor.digest)
            assert by_digest.digest == descriptor.digest
        finally:
            await source.close()

    run(scenario())


def skopeo_copy(source: str, destination: str) -> None:
    """``skopeo copy`` keeping digests, plain HTTP towards loopback registries."""
    skopeo = require_tool("skopeo", "an independent registry client")
    flags = ["--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"]
    subprocess.run([skopeo, "copy", "-q", *flags, source, destination], check=True, capture_output=True)


def test_skopeo_reads_what_ocikit_pushed(any_registry: str, tmp_path: Path) -> None:
    name = repo()
    layers = [os.urandom(2000), os.urandom(6 * MiB)]

    async def push() -> bytes:
        destination = open_destination(f"{any_registry}/{name}:v1")
        _, raw = await push_image(destination, layers, ["v1"])
        await destination.close()
        return raw

    raw = run(push())
    layout = tmp_path / "layout"
    skopeo_copy(f"docker://{any_registry}/{name}:v1", f"oci:{layout}:v1")
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    assert manifest_digest == sha256(raw)
    assert (layout / "blobs" / "sha256" / manifest_digest.split(":")[1]).read_bytes() == raw
    for data in layers:
        assert (layout / "blobs" / "sha256" / sha256(data).split(":")[1]).read_bytes() == data


def test_ocikit_reads_what_skopeo_pushed(registry: ServerProcess, tmp_path: Path) -> None:
    umoci = require_tool("umoci", "builds the image skopeo pushes")
    layout = tmp_path / "image"
    subprocess.run([umoci, "init", "--layout", str(layout)], check=True)
    subprocess.run([umoci, "new", "--image", f"{layout}:v1"], check=True)
    name = repo()
    skopeo_copy(f"oci:{layout}:v1", f"docker://{registry.host}/{name}:v1")
    index = json.loads((layout / "index.json").read_text())
    expected = index["manifests"][0]["digest"]

    async def pull() -> bytes:
        source = open_source(f"{registry.host}/{name}:v1")
        try:
            descriptor = await source.resolve(None)
            assert descriptor.digest == expected
            raw = await source.fetch_manifest(descriptor)
            config = json.loads(raw)["config"]
            blob = await read_all(
                source,
                Descriptor(media_type=config["mediaType"], digest=config["digest"], size=config["size"]),
            )
            assert sha256(blob) == config["digest"]
            return raw
        finally:
            await source.close()

    assert run(pull()) == (layout / "blobs" / "sha256" / expected.split(":")[1]).read_bytes()


def test_missing_manifest_and_blob_are_not_found(any_registry: str) -> None:
    async def scenario() -> None:
        source = open_source(f"{any_registry}/{repo()}:nope")
        try:
            with pytest.raises(RegistryNotFound, match=r"MANIFEST_UNKNOWN|NAME_UNKNOWN|404"):
                await source.resolve(None)
            with pytest.raises(RegistryNotFound):
                await read_all(source, layer_descriptor(b"absent"))
        finally:
            await source.close()

    run(scenario())


def test_upload_of_wrong_bytes_is_refused_and_leaves_nothing(any_registry: str) -> None:
    name = repo()
    data = os.urandom(6 * MiB)
    claimed = layer_descriptor(data)
    wrong = bytearray(data)
    wrong[-1] ^= 0xFF

    async def scenario() -> None:
        destination = RegistryDestination(parse_reference(f"{any_registry}/{name}:v1"), chunk_size=2 * MiB)
        try:
            with pytest.raises(VerificationError):
                await destination.put_blob(claimed, feed(bytes(wrong)))
            with pytest.raises(VerificationError, match="source ended"):
                await destination.put_blob(claimed, feed(data[:-5]))
            with pytest.raises(VerificationError, match="more than"):
                await destination.put_blob(claimed, feed(data + b"x"))
            small = layer_descriptor(b"small")
            with pytest.raises(VerificationError, match="digest mismatch"):
                await destination.put_blob(small, feed(b"smalL"))
            assert not await destination.has_blob(claimed)
            assert not await destination.has_blob(small)
        finally:
            await destination.close()

    run(scenario())


def test_chunked_upload_honours_oci_chunk_min_length(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", extra=["--chunk-min-length", str(3 * MiB)])
    try:
        data = os.urandom(7 * MiB + 5)
        descriptor = layer_descriptor(data)

        async def scenario() -> bytes:
            reference = parse_reference(f"{server.host}/chunked/blob:v1")
            destination = RegistryDestination(reference, chunk_size=MiB, monolithic_limit=0)
            await destination.put_blob(descriptor, feed(data, 256 * 1024))
            await destination.close()
            source = RegistrySource(reference)
            try:
                return await read_all(source, descriptor)
            finally:
                await source.close()

        assert run(scenario()) == data
        patches = [line for line in server.access_lines() if line.startswith("PATCH /v2/chunked/blob/")]
        assert len(patches) == 3  # 3 MiB, 3 MiB, then the rest: never the 1 MiB asked for
    finally:
        server.stop()


def test_interrupted_download_resumes_with_range(registry: ServerProcess) -> None:
    name = repo()
    data = os.urandom(8 * MiB)
    descriptor = layer_descriptor(data)
    run(_push_blob(registry.host, name, descriptor, data))
    host, port = registry.host.split(":")
    proxy = CuttingProxy((host, int(port)), after=3 * MiB, direction="down", cuts=2).start()
    try:

        async def pull() -> bytes:
            source = open_source(f"{proxy.host}/{name}:x")
            try:
                return await read_all(source, descriptor)
            finally:
                await source.close()

        assert run(pull()) == data
        assert proxy.cut_count == 2
        ranges = [head for head in proxy.heads if b"\r\nRange: bytes=" in head]
        assert len(ranges) == 2
    finally:
        proxy.stop()


def test_download_broken_every_mib_still_completes(registry: ServerProcess) -> None:
    """The retry budget counts breaks without progress in between, not breaks in total."""
    name = repo()
    data = os.urandom(4 * MiB + 3)
    descriptor = layer_descriptor(data)
    run(_push_blob(registry.host, name, descriptor, data))
    host, port = registry.host.split(":")
    proxy = CuttingProxy((host, int(port)), after=MiB, direction="down", cuts=100).start()
    try:

        async def pull() -> bytes:
            source = RegistrySource(parse_reference(f"{proxy.host}/{name}:x"), ClientOptions(retries=1))
            try:
                return await read_all(source, descriptor)
            finally:
                await source.close()

        assert run(pull()) == data
        assert proxy.cut_count >= 4
    finally:
        proxy.stop()


def test_interrupted_chunk_upload_resumes_from_the_registry_offset(registry: ServerProcess) -> None:
    name = repo()
    data = os.urandom(10 * MiB)
    descriptor = layer_descriptor(data)
    host, port = registry.host.split(":")
    proxy = CuttingProxy((host, int(port)), after=5 * MiB, direction="up", cuts=1).start()
    try:

        async def push() -> None:
            reference = parse_reference(f"{proxy.host}/{name}:x")
            destination = RegistryDestination(reference, chunk_size=8 * MiB, monolithic_limit=0)
            try:
                await destination.put_blob(descriptor, feed(data))
            finally:
                await destination.close()

        run(push())
        assert proxy.cut_count == 1
        statuses = [
            head for head in proxy.heads if head.startswith(b"GET /v2/") and b"/blobs/uploads/" in head
        ]
        assert statuses, "the client asked the registry where the upload stands"

        async def pull() -> bytes:
            source = open_source(f"{registry.host}/{name}:x")
            try:
                return await read_all(source, descriptor)
            finally:
                await source.close()

        assert run(pull()) == data
    finally:
        proxy.stop()


async def _push_blob(host: str, name: str, descriptor: Descriptor, data: bytes) -> None:
    destination = open_destination(f"{host}/{name}:x")
    try:
        await destination.put_blob(descriptor, feed(data))
    finally:
        await destination.close()


def test_mount_across_repositories(registry: ServerProcess) -> None:
    first, second = repo(), repo()
    data = os.urandom(100_000)
    descriptor = layer_descriptor(data)

    async def scenario() -> None:
        await _push_blob(registry.host, first, descriptor, data)
        destination = open_destination(f"{registry.host}/{second}:x")
        try:
            assert not await destination.has_blob(descriptor)
            assert await destination.mount_from(descriptor, first)
            assert await destination.has_blob(descriptor)
            assert not await destination.mount_from(layer_descriptor(b"nowhere"), first)
        finally:
            await destination.close()

    run(scenario())


def test_mount_blob_capability_only_for_sources_on_the_same_registry(
    registry: ServerProcess, distribution: Distribution
) -> None:
    """``MountsBlobs`` as the copy engine uses it: a source in another repository of the same
    registry mounts; any other source is refused without a request (with no record of blob
    locations: tests/test_client_mounts.py covers what that adds)."""
    first, second = repo(), repo()
    data = os.urandom(10_000)
    descriptor = layer_descriptor(data)

    async def scenario() -> None:
        await _push_blob(registry.host, first, descriptor, data)
        destination = open_destination(f"{registry.host}/{second}:x", ClientOptions(remember_blobs=False))
        same = open_source(f"{registry.host}/{first}:x")
        elsewhere = open_source(f"{distribution.host}/{first}:x")
        itself = open_source(f"{registry.host}/{second}:x")
        try:
            assert isinstance(destination, MountsBlobs)
            assert not await destination.mount_blob(descriptor, elsewhere)
            assert not await destination.mount_blob(descriptor, itself)
            assert not await destination.has_blob(descriptor)
            assert await destination.mount_blob(descriptor, same)
            assert await destination.has_blob(descriptor)
        finally:
            for endpoint in (destination, same, elsewhere, itself):
                await endpoint.close()

    run(scenario())


def test_referrers_api_and_tag_schema_fallback(any_registry: str) -> None:
    name = repo()

    async def scenario() -> None:
        destination = open_destination(f"{any_registry}/{name}:v1")
        subject, subject_raw = await push_image(destination, [os.urandom(500)], ["v1"])
        subject_field = {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}
        signature, _ = await push_image(
            destination,
            [os.urandom(300)],
            [],
            artifactType="application/vnd.example.signature",
            subject=subject_field,
            annotations={"org.example": "yes"},
        )
        await destination.close()
        source = open_source(f"{any_registry}/{name}:v1")
        try:
            found = await source.referrers(subject)
            assert [d.digest for d in found] == [signature.digest]
            assert found[0].artifact_type == "application/vnd.example.signature"
            assert (found[0].annotations or {}).get("org.example") == "yes"
            assert await source.referrers(subject, "application/other") == []
            assert await source.fetch_manifest(subject) == subject_raw
        finally:
            await source.close()

    run(scenario())


def test_redirect_to_another_host_drops_authorization() -> None:
    data = os.urandom(300_000)
    digest = sha256(data)
    front = RedirectingRegistry("alice", "s3cret", {digest: data}).start()
    try:

        async def pull() -> bytes:
            options = ClientOptions(credentials=("alice", "s3cret"))
            source = RegistrySource(parse_reference(f"{front.host}/some/repo:x"), options)
            try:
                return await read_all(source, layer_descriptor(data))
            finally:
                await source.close()

        assert run(pull()) == data
        assert front.seen_by_blob_host, "the blob came from the other host"
        assert all("Authorization" not in headers for headers in front.seen_by_blob_host)
    finally:
        front.stop()


# ---------------------------------------------------------------- a registry that lies

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mediatype.OCI_MANIFEST,
        "config": {"mediaType": mediatype.OCI_CONFIG, "digest": sha256(b"{}"), "size": 2},
        "layers": [],
    }
).encode()
MANIFEST_DESCRIPTOR = Descriptor(
    media_type=mediatype.OCI_MANIFEST, digest=sha256(MANIFEST), size=len(MANIFEST)
)


@pytest.fixture
def liar() -> Iterator[LyingRegistry]:
    server = LyingRegistry().start()
    yield server
    server.stop()


def _source(liar: LyingRegistry, retries: int = 1) -> RegistrySource:
    return RegistrySource(parse_reference(f"{liar.host}/lies/repo:v1"), ClientOptions(retries=retries))


def _manifest_path(identifier: str) -> str:
    return f"/v2/lies/repo/manifests/{identifier}"


def _expect(liar: LyingRegistry, call: Any, error: type[Exception], match: str) -> None:
    async def scenario() -> None:
        source = _source(liar)
        try:
            with pytest.raises(error, match=match):
                await call(source)
        finally:
            await source.close()

    run(scenario())


def test_liar_manifest_with_wrong_digest(liar: LyingRegistry) -> None:
    other = MANIFEST.replace(b'"layers"', b'"layers" ')
    liar.routes[("GET", _manifest_path(MANIFEST_DESCRIPTOR.digest))] = fixed(
        200, other[: len(MANIFEST)], {"Content-Type": mediatype.OCI_MANIFEST}
    )
    _expect(liar, lambda s: s.fetch_manifest(MANIFEST_DESCRIPTOR), VerificationError, "digest mismatch")


def test_liar_manifest_with_wrong_size(liar: LyingRegistry) -> None:
    liar.routes[("GET", _manifest_path(MANIFEST_DESCRIPTOR.digest))] = fixed(
        200, MANIFEST + b"\n", {"Content-Type": mediatype.OCI_MANIFEST}
    )
    _expect(liar, lambda s: s.fetch_manifest(MANIFEST_DESCRIPTOR), VerificationError, "announces")


def test_liar_manifest_with_conflicting_media_type(liar: LyingRegistry) -> None:
    liar.routes[("GET", _manifest_path(MANIFEST_DESCRIPTOR.digest))] = fixed(
        200, MANIFEST, {"Content-Type": mediatype.OCI_INDEX}
    )
    _expect(liar, lambda s: s.fetch_manifest(MANIFEST_DESCRIPTOR), VerificationError, "served as")
    descriptor = Descriptor(
        media_type=mediatype.DOCKER_MANIFEST, digest=MANIFEST_DESCRIPTOR.digest, size=len(MANIFEST)
    )
    liar.routes[("GET", _manifest_path(MANIFEST_DESCRIPTOR.digest))] = fixed(200, MANIFEST, {})
    _expect(liar, lambda s: s.fetch_manifest(descriptor), VerificationError, "declares mediaType")


@pytest.mark.parametrize("garbage", [b"{not json", b"[" * 100_000], ids=["broken", "100000-deep"])
def test_liar_manifest_that_is_not_json(liar: LyingRegistry, garbage: bytes) -> None:
    descriptor = Descriptor(media_type=mediatype.OCI_MANIFEST, digest=sha256(garbage), size=len(garbage))
    liar.routes[("GET", _manifest_path(descriptor.digest))] = fixed(
        200, garbage, {"Content-Type": mediatype.OCI_MANIFEST}
    )
    _expect(liar, lambda s: s.fetch_manifest(descriptor), VerificationError, "not valid JSON")


def test_liar_resolves_a_digest_to_another(liar: LyingRegistry) -> None:
    wrong = "sha256:" + "b" * 64
    headers = {
        "Content-Type": mediatype.OCI_MANIFEST,
        "Docker-Content-Digest": wrong,
        "Content-Length": str(len(MANIFEST)),
    }
    liar.routes[("HEAD", _manifest_path(MANIFEST_DESCRIPTOR.digest))] = fixed(200, b"", headers)
    _expect(liar, lambda s: s.resolve(MANIFEST_DESCRIPTOR.digest), VerificationError, "answered for")


def test_liar_blob_with_wrong_bytes(liar: LyingRegistry) -> None:
    data = os.urandom(100_000)
    descriptor = layer_descriptor(data)
    liar.routes[("GET", f"/v2/lies/repo/blobs/{descriptor.digest}")] = fixed(200, os.urandom(100_000))
    received: list[bytes] = []

    async def consume(source: RegistrySource) -> None:
        async for chunk in source.open_blob(descriptor):
            received.append(chunk)

    _expect(liar, consume, VerificationError, "digest is")
    assert sum(map(len, received)) < len(data), "the last chunk of a wrong blob is never handed on"


def test_liar_blob_too_long_or_too_short(liar: LyingRegistry) -> None:
    data = os.urandom(50_000)
    descriptor = layer_descriptor(data)
    path = f"/v2/lies/repo/blobs/{descriptor.digest}"
    liar.routes[("GET", path)] = fixed(200, data + b"extra")
    _expect(liar, lambda s: read_all(s, descriptor), VerificationError, "more than")
    liar.routes[("GET", path)] = fixed(200, data[:-10])
    _expect(liar, lambda s: read_all(s, descriptor), VerificationError, "sent 49990 of the 50000")


def test_liar_blob_truncated_every_time(liar: LyingRegistry) -> None:
    data = os.urandom(50_000)
    descriptor = layer_descriptor(data)
    liar.routes[("GET", f"/v2/lies/repo/blobs/{descriptor.digest}")] = truncated(data[:1000], len(data))
    _expect(liar, lambda s: read_all(s, descriptor), TransportError, "download failed at byte")


def test_liar_error_codes_are_in_the_message(liar: LyingRegistry) -> None:
    body = json.dumps({"errors": [{"code": "DENIED", "message": "not for you", "detail": {"why": "policy"}}]})
    liar.routes[("GET", "/v2/lies/repo/tags/list")] = fixed(
        403, body.encode(), {"Content-Type": "application/json"}
    )
    _expect(liar, lambda s: s.tags(), AuthenticationError, 'HTTP 403 .*DENIED: not for you .*"why": "policy"')
    liar.routes[("HEAD", _manifest_path("v1"))] = fixed(500, b"")
    _expect(liar, lambda s: s.resolve(None), RegistryError, "HTTP 500")


def test_liar_401_without_a_challenge(liar: LyingRegistry) -> None:
    liar.routes[("GET", "/v2/lies/repo/tags/list")] = fixed(401, b"go away")
    _expect(liar, lambda s: s.tags(), AuthenticationError, "HTTP 401.*go away")


def test_registry_warnings_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = start_registry(tmp_path / "data", extra=["--warnings", "this registry is deprecated"])
    try:

        async def scenario() -> None:
            source = open_source(f"{server.host}/{repo()}:v1")
            try:
                for _ in range(3):
                    with pytest.raises(RegistryNotFound):
                        await source.resolve(None)
            finally:
                await source.close()

        with caplog.at_level("WARNING", logger="ocikit.client"):
            run(scenario())
        messages = [record.getMessage() for record in caplog.records if record.name == "ocikit.client"]
        assert messages == [f"{server.host}: this registry is deprecated"]
    finally:
        server.stop()


def test_distribution_drops_a_broken_upload_the_first_chunk_starts_over(distribution: Distribution) -> None:
    """CNCF distribution 2.x cancels an upload whose PATCH broke off; while only the chunk in
    hand was sent, the client starts a new upload with it."""
    name = repo()
    data = os.urandom(12 * MiB)
    descriptor = layer_descriptor(data)
    host, port = distribution.host.split(":")
    proxy = CuttingProxy(
        (host, int(port)), after=3 * MiB, direction="up", marker=b"Content-Range: 0-"
    ).start()
    try:

        async def push() -> None:
            reference = parse_reference(f"{proxy.host}/{name}:x")
            destination = RegistryDestination(reference, chunk_size=8 * MiB, monolithic_limit=0)
            try:
                await destination.put_blob(descriptor, feed(data))
            finally:
                await destination.close()

        run(push())
        assert proxy.cut_count == 1
        posts = [head for head in proxy.heads if head.startswith(b"POST /v2/")]
        assert len(posts) == 2, "a second upload replaced the one distribution dropped"

        async def pull() -> bytes:
            source = open_source(f"{distribution.host}/{name}:x")
            try:
                return await read_all(source, descriptor)
            finally:
                await source.close()

        assert run(pull()) == data
    finally:
        proxy.stop()


def test_distribution_drops_a_broken_upload_later_chunks_raise_upload_lost(
    distribution: Distribution,
) -> None:
    name = repo()
    data = os.urandom(12 * MiB)
    descriptor = layer_descriptor(data)
    host, port = distribution.host.split(":")
    second_chunk = f"Content-Range: {4 * MiB}-".encode()
    proxy = CuttingProxy((host, int(port)), after=2 * MiB, direction="up", marker=second_chunk).start()
    try:

        async def push() -> None:
            reference = parse_reference(f"{proxy.host}/{name}:x")
            destination = RegistryDestination(reference, chunk_size=4 * MiB, monolithic_limit=0)
            try:
                with pytest.raises(UploadLost, match="upload the blob again"):
                    await destination.put_blob(descriptor, feed(data))
                assert not await destination.has_blob(descriptor)
            finally:
                await destination.close()

        run(push())
        assert proxy.cut_count == 1
    finally:
        proxy.stop()


def test_the_copy_engine_sends_a_lost_blob_again(distribution: Distribution, tmp_path: Path) -> None:
    """The case above inside a copy: the engine re-sends the blob and the copy completes."""
    layout = tmp_path / "layout"
    built = build_image("lost", payload=12 * MiB, platforms=("amd64",))  # one incompressible layer
    write_layout(layout, {"v1": built})
    host, port = distribution.host.split(":")
    second_chunk = f"Content-Range: {4 * MiB}-".encode()
    proxy = CuttingProxy((host, int(port)), after=2 * MiB, direction="up", marker=second_chunk).start()
    name = repo()
    try:

        async def copy() -> None:
            source = OCILayout.open(layout).source(owned=True)
            reference = parse_reference(f"{proxy.host}/{name}:v1")
            destination = RegistryDestination(reference, chunk_size=4 * MiB, monolithic_limit=0)
            try:
                await copy_image(source, destination, "v1", tags=["v1"])
            finally:
                await destination.close()
                await source.close()

        run(copy())
        assert proxy.cut_count == 1
    finally:
        proxy.stop()
    assert run(_manifest_digest(distribution.host, name)) == built.top.digest


async def _manifest_digest(host: str, name: str) -> str:
    source = RegistrySource(parse_reference(f"{host}/{name}:v1"))
    try:
        return str((await source.resolve("v1")).digest)
    finally:
        await source.close()


def test_sha512_blobs_round_trip(registry: ServerProcess) -> None:
    data = os.urandom(6 * MiB)
    descriptor = Descriptor(
        media_type=mediatype.OCI_LAYER_GZIP,
        digest="sha512:" + hashlib.sha512(data).hexdigest(),
        size=len(data),
    )
    name = repo()

    async def scenario() -> bytes:
        reference = parse_reference(f"{registry.host}/{name}:x")
        destination = RegistryDestination(reference, chunk_size=4 * MiB)
        await destination.put_blob(descriptor, feed(data))
        assert await destination.has_blob(descriptor)
        await destination.close()
        source = RegistrySource(reference)
        try:
            return await read_all(source, descriptor)
        finally:
            await source.close()

    assert run(scenario()) == data


def test_parallel_transfers_share_one_client(any_registry: str) -> None:
    """What a copy engine does: blobs pushed and pulled concurrently through one destination and
    one source (one connection pool, one auth state)."""
    name = repo()
    layers = [os.urandom(size) for size in (10, 200_000, 3 * MiB, 5 * MiB + 1, 7 * MiB, 1 * MiB)]
    descriptors = [layer_descriptor(layer) for layer in layers]

    async def scenario() -> list[bytes]:
        reference = parse_reference(f"{any_registry}/{name}:x")
        destination = RegistryDestination(reference, chunk_size=2 * MiB, monolithic_limit=MiB)
        try:
            await asyncio.gather(
                *(destination.put_blob(d, feed(b)) for d, b in zip(descriptors, layers, strict=True))
            )
        finally:
            await destination.close()
        source = RegistrySource(reference)
        try:
            return list(await asyncio.gather(*(read_all(source, d) for d in descriptors)))
        finally:
            await source.close()

    assert run(scenario()) == layers


def test_liar_redirects_in_circles_or_to_garbage(liar: LyingRegistry) -> None:
    data = b"x" * 100
    descriptor = layer_descriptor(data)
    path = f"/v2/lies/repo/blobs/{descriptor.digest}"
    liar.routes[("GET", path)] = fixed(307, b"", {"Location": path})
    _expect(liar, lambda s: read_all(s, descriptor), TransportError, "more than 5 redirects")
    liar.routes[("GET", path)] = fixed(307, b"", {"Location": "/v2/bl\u00f6b"})
    _expect(liar, lambda s: read_all(s, descriptor), TransportError, "non-ASCII")
    for length in ("-5", "+100", "1_00"):  # the last two are what int() reads as 100
        liar.routes[("GET", path)] = fixed(200, data, {"Content-Length": length})
        _expect(liar, lambda s: read_all(s, descriptor), TransportError, "invalid Content-Length")


def test_liar_status_that_is_no_number(liar: LyingRegistry) -> None:
    """``"²00"`` passes ``str.isdigit`` and makes ``int`` raise: a clear TransportError instead."""

    def superscript_status(handler: Any) -> None:
        handler.wfile.write("HTTP/1.1 \u00b200 OK\r\nContent-Length: 0\r\n\r\n".encode("latin-1"))
        handler.close_connection = True

    liar.routes[("GET", "/v2/lies/repo/tags/list")] = superscript_status
    _expect(liar, lambda s: s.tags(), TransportError, "not an HTTP/1.x response")


def test_liar_chunk_size_of_minus_one(liar: LyingRegistry) -> None:
    """int("-1", 16) is -1, and a read of -1 bytes reads until the connection closes: the
    client must refuse the chunk size instead of buffering whatever the liar sends."""

    def endless_chunk(handler: Any) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n")
        handler.wfile.write(b"x" * (4 << 20))
        handler.close_connection = True

    liar.routes[("GET", "/v2/lies/repo/tags/list")] = endless_chunk
    _expect(liar, lambda s: s.tags(), TransportError, "malformed chunk size")


def test_liar_index_whose_child_digest_is_a_path(liar: LyingRegistry, tmp_path: Path) -> None:
    """``sha256:/../../../../v2/other/manifests/latest`` resolves to another path of the
    registry: a copy refuses the document before any request is built from it."""
    hostile_digest = "sha256:/../../../../v2/other/manifests/latest"
    hostile = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatype.OCI_INDEX,
            "manifests": [{"mediaType": mediatype.OCI_MANIFEST, "digest": hostile_digest, "size": 5}],
        }
    ).encode()
    headers = {
        "Content-Type": mediatype.OCI_INDEX,
        "Docker-Content-Digest": sha256(hostile),
        "Content-Length": str(len(hostile)),
    }
    liar.routes[("HEAD", _manifest_path("v1"))] = fixed(200, b"", headers)
    liar.routes[("GET", _manifest_path("v1"))] = fixed(200, hostile, headers)
    liar.routes[("GET", _manifest_path(sha256(hostile)))] = fixed(200, hostile, headers)
    reached: list[str] = []

    def record(handler: Any) -> None:
        reached.append(handler.path)
        handler.reply(404, b"")

    liar.routes[("GET", "/v2/other/manifests/latest")] = record

    async def copy() -> None:
        source = _source(liar)
        destination = OCILayout.open(tmp_path / "layout", create=True).destination(owned=True)
        try:
            await copy_image(source, destination, "v1", tags=["v1"])
        finally:
            await destination.close()
            await source.close()

    with pytest.raises(Exception, match=r"manifests\[0\]"):
        run(copy())
    assert reached == []


def test_liar_asks_for_chunks_larger_than_memory(liar: LyingRegistry) -> None:
    """The chunk in flight is kept until the registry takes it: an OCI-Chunk-Min-Length of
    10^17 would hold a whole layer in memory. The push stops with a clear error instead."""
    upload = {"Location": "/v2/lies/repo/blobs/uploads/u1", "OCI-Chunk-Min-Length": str(10**17)}
    liar.routes[("POST", "/v2/lies/repo/blobs/uploads/")] = fixed(202, b"", upload)
    data = os.urandom(2 * MiB)
    descriptor = layer_descriptor(data)

    async def source() -> AsyncIterator[bytes]:
        yield data

    async def push() -> None:
        destination = RegistryDestination(parse_reference(f"{liar.host}/lies/repo:v1"), monolithic_limit=0)
        try:
            await destination.put_blob(descriptor, source())
        finally:
            await destination.close()

    with pytest.raises(TransportError, match="chunks of at least 100000000000000000 bytes"):
        run(push())


def test_liar_token_that_would_split_a_header(liar: LyingRegistry) -> None:
    """A token goes into the Authorization header as it is: one with CR/LF in it is refused
    as the token service's fault, not turned into a header of the liar's choosing."""
    realm = f"http://{liar.host}/token"
    challenge = {
        "WWW-Authenticate": f'Bearer realm="{realm}",service="lies",scope="repository:lies/repo:pull"'
    }
    liar.routes[("GET", "/v2/lies/repo/tags/list")] = fixed(401, b"", challenge)
    token = json.dumps({"token": "abc\r\nX-Injected: yes"}).encode()
    liar.routes[("GET", "/token?service=lies&scope=repository%3Alies%2Frepo%3Apull")] = fixed(
        200, token, {"Content-Type": "application/json"}
    )
    _expect(liar, lambda s: s.tags(), TransportError, "not printable ASCII")
