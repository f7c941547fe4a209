"""OCI image layouts: ocikit reads what others write and writes what others read, stores only
verified blobs, updates index.json atomically under a lock and never follows a symlink."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import require_tool
from ocikit.spec import Descriptor, Platform, VerificationError, parse_platform
from ocikit.store.copy import copy_image
from ocikit.store.layout import OCILayout
from ocikit.store.transport import NotFound, TransportError
from store_helpers import (
    REF_NAME,
    Blob,
    build_image,
    layout_files,
    run,
    tagged,
    write_layout,
)


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _copy(
    source: Path, ref: str | None, target: Path, tags: list[str], platform: Platform | None = None
) -> None:
    async def work() -> None:
        with OCILayout.open(source) as src, OCILayout.open(target, create=True) as dst:
            await copy_image(src.source(), dst.destination(), ref, tags=tags, platform=platform)

    asyncio.run(work())


def _staging(path: Path) -> list[str]:
    incoming = path / ".ocikit" / "incoming"
    return sorted(os.listdir(incoming)) if incoming.exists() else []


def test_new_layout_is_valid_and_empty(tmp_path: Path) -> None:
    with OCILayout.open(tmp_path / "new", create=True) as layout:
        assert layout.validate() == []
        assert layout.read_index()["manifests"] == []
    assert json.loads((tmp_path / "new" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_refuses_to_write_into_an_unrelated_directory(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(TransportError, match="not empty and not an image layout"):
        OCILayout.open(tmp_path / "photos", create=True)
    assert os.listdir(tmp_path / "photos") == ["cat.jpg"]
    with pytest.raises(TransportError, match="no image layout"):
        OCILayout.open(tmp_path / "missing")


def test_put_blob_verifies_before_publishing(tmp_path: Path) -> None:
    data = b"some layer bytes" * 100
    good = Blob("application/octet-stream", data)

    async def work(layout: OCILayout) -> None:
        destination = layout.destination()
        wrong_digest = Descriptor(
            media_type=good.media_type, digest=Blob("x", b"other").digest, size=len(data)
        )
        with pytest.raises(VerificationError, match="digest mismatch"):
            await destination.put_blob(wrong_digest, _chunks(data))
        too_long = Descriptor(media_type=good.media_type, digest=good.digest, size=len(data) - 1)
        with pytest.raises(VerificationError, match="got more"):
            await destination.put_blob(too_long, _chunks(data))
        truncated = Descriptor(media_type=good.media_type, digest=good.digest, size=len(data))
        with pytest.raises(VerificationError, match="size mismatch"):
            await destination.put_blob(truncated, _chunks(data[:-5]))
        assert layout_files(layout.path) == {}
        assert _staging(layout.path) == []
        await destination.put_blob(truncated, _chunks(data))
        assert await destination.has_blob(truncated)

    with OCILayout.open(tmp_path / "l", create=True) as layout:
        asyncio.run(work(layout))
        assert layout_files(layout.path) == {good.digest: data}


def test_reads_layout_written_by_skopeo(tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    run(skopeo, "copy", "--all", "oci:" + str(tmp_path / "src") + ":v1", "oci:" + str(tmp_path / "sk") + ":t")
    _copy(tmp_path / "sk", "t", tmp_path / "ours", ["again"])
    assert tagged(tmp_path / "ours", "again")["digest"] == image.top.digest
    assert layout_files(tmp_path / "ours") == image.blobs


def test_skopeo_and_umoci_read_what_ocikit_writes(tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    umoci = require_tool("umoci")
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    _copy(tmp_path / "src", "v1", tmp_path / "ours", ["all"])
    _copy(tmp_path / "src", "v1", tmp_path / "ours", ["arm"], platform=parse_platform("linux/arm64"))
    inspected = json.loads(run(skopeo, "inspect", f"oci:{tmp_path / 'ours'}:arm").stdout)
    assert inspected["Digest"] == image.manifests["linux/arm64"]
    assert inspected["Architecture"] == "arm64"
    run(skopeo, "copy", "--all", f"oci:{tmp_path / 'ours'}:all", f"oci:{tmp_path / 'back'}:y")
    assert tagged(tmp_path / "back", "y")["digest"] == image.top.digest
    assert layout_files(tmp_path / "back") == image.blobs
    # umoci unpacks a manifest, checking every layer against its digest and diffID.
    run(umoci, "unpack", "--image", f"{tmp_path / 'ours'}:arm", tmp_path / "bundle")
    assert (
        (tmp_path / "bundle" / "rootfs" / "opt" / "demo" / "arm64" / "app").read_bytes().startswith(b"demo")
    )


def test_tags_replace_entries_of_the_same_name_and_keep_foreign_ones(tmp_path: Path) -> None:
    first, second = build_image("one", ("amd64",)), build_image("two", ("amd64",))
    foreign = {"mediaType": "application/xml", "digest": Blob("x", b"<x/>").digest, "size": 4}
    write_layout(tmp_path / "src", {"a": first, "b": second})
    _copy(tmp_path / "src", "a", tmp_path / "dst", ["latest"])
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    index["manifests"].append(foreign)
    index["annotations"] = {"org.example": "kept"}
    (tmp_path / "dst" / "index.json").write_text(json.dumps(index))
    _copy(tmp_path / "src", "b", tmp_path / "dst", ["latest"])
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    assert tagged(tmp_path / "dst", "latest")["digest"] == second.top.digest
    assert foreign in index["manifests"]
    assert index["annotations"] == {"org.example": "kept"}


def test_untagged_copy_is_listed_without_a_name(tmp_path: Path) -> None:
    image = build_image("solo", ("amd64",))
    write_layout(tmp_path / "src", {"x": image})
    _copy(tmp_path / "src", "x", tmp_path / "dst", [])
    entries = json.loads((tmp_path / "dst" / "index.json").read_text())["manifests"]
    assert [(e["digest"], e.get("annotations")) for e in entries] == [(image.top.digest, None)]

    async def resolve() -> str:
        with OCILayout.open(tmp_path / "dst") as layout:
            return (await layout.source().resolve(None)).digest

    assert asyncio.run(resolve()) == image.top.digest


def test_resolve_by_name_digest_and_errors(tmp_path: Path) -> None:
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image, "v2": image})

    async def work() -> None:
        with OCILayout.open(tmp_path / "src") as layout:
            source = layout.source()
            assert (await source.resolve("v2")).digest == image.top.digest
            child = image.manifests["linux/arm64"]
            # A digest not listed in index.json is found among the blobs.
            assert (await source.resolve(f"@{child}")).media_type.endswith("manifest.v1+json")
            with pytest.raises(NotFound, match="no image named 'v3'"):
                await source.resolve("v3")
            with pytest.raises(TransportError, match="holds 2 images"):
                await source.resolve(None)

    asyncio.run(work())


def test_symlinks_inside_a_layout_are_never_followed(tmp_path: Path) -> None:
    image = build_image("sym", ("amd64",))
    write_layout(tmp_path / "src", {"x": image})
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    victim = next(d for d in image.blobs if d != image.top.digest)
    blob = tmp_path / "src" / "blobs" / "sha256" / victim.split(":")[1]
    blob.unlink()
    blob.symlink_to(secret)

    async def work() -> None:
        with OCILayout.open(tmp_path / "src") as layout:
            assert layout.locate(victim) is None
            with OCILayout.open(tmp_path / "dst", create=True) as target:
                with pytest.raises(NotFound, match="missing"):
                    await copy_image(layout.source(), target.destination(), "x", tags=["x"])
                assert target.read_index()["manifests"] == []

    asyncio.run(work())
    (tmp_path / "src" / "index.json").unlink()
    (tmp_path / "src" / "index.json").symlink_to(secret)
    with (
        OCILayout.open(tmp_path / "src") as layout,
        pytest.raises(TransportError, match="not a regular file"),
    ):
        layout.read_index()


_WRITER = """
import sys
from ocikit.spec import Descriptor
from ocikit.store.layout import OCILayout
from ocikit.store import refs
path, worker, count, digest = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
target = Descriptor(media_type="application/vnd.oci.image.manifest.v1+json", digest=digest, size=3)
with OCILayout.open(path) as layout:
    for i in range(count):
        layout.update_index(lambda index: refs.set_ref(index, f"w{worker}-{i}", target))
"""


def test_concurrent_index_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    OCILayout.open(path, create=True).close()
    digest = Blob("x", b"abc").digest
    workers, count = 4, 25
    processes = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), str(count), digest])
        for w in range(workers)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0] * workers
    names = {e["annotations"][REF_NAME] for e in json.loads((path / "index.json").read_text())["manifests"]}
    assert names == {f"w{w}-{i}" for w in range(workers) for i in range(count)}


def test_reads_layout_written_by_umoci(tmp_path: Path) -> None:
    umoci = require_tool("umoci")
    image = f"{tmp_path / 'umoci'}:base"
    run(umoci, "init", "--layout", tmp_path / "umoci")
    run(umoci, "new", "--image", image)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "hello.txt").write_text("hello from umoci\n")
    run(umoci, "insert", "--image", image, tmp_path / "files", "/srv")
    run(umoci, "config", "--image", image, "--config.cmd", "/bin/true", "--tag", "configured")
    _copy(tmp_path / "umoci", "configured", tmp_path / "ours", ["c"])
    source = tagged(tmp_path / "umoci", "configured")
    assert tagged(tmp_path / "ours", "c")["digest"] == source["digest"]
    with OCILayout.open(tmp_path / "ours") as layout:
        assert layout.validate() == []
    run(umoci, "unpack", "--image", f"{tmp_path / 'ours'}:c", tmp_path / "bundle")
    assert (tmp_path / "bundle" / "rootfs" / "srv" / "hello.txt").read_text() == "hello from umoci\n"
