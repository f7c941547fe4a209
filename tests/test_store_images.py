"""The local image store: names, the StoredImage API (diffIDs, chainIDs, blob paths), garbage
collection that never removes what is referenced, fsck, and a copy killed mid-way."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocikit.spec import chain_ids, parse_platform
from ocikit.store.copy import copy_image
from ocikit.store.images import ImageStore, default_store_path, normalize_name
from ocikit.store.layout import OCILayout
from ocikit.store.maintenance import check_blobs, collect_garbage
from ocikit.store.transport import NotFound, TransportError
from store_helpers import Blob, BuiltImage, add_blob, build_image, layout_files, referrer, write_layout


def pull(layout: Path, ref: str, store: Path, name: str) -> None:
    async def work() -> None:
        with OCILayout.open(layout) as source, ImageStore(store) as images:
            await copy_image(source.source(), images.destination(), ref, tags=[normalize_name(name)])

    asyncio.run(work())


@pytest.fixture
def stocked(tmp_path: Path) -> tuple[Path, dict[str, BuiltImage]]:
    """A store holding a two-platform image and a single-platform one."""
    multi, single = build_image("multi"), build_image("single", ("amd64",))
    write_layout(tmp_path / "src", {"multi": multi, "single": single})
    pull(tmp_path / "src", "multi", tmp_path / "store", "example.com/multi:1")
    pull(tmp_path / "src", "single", tmp_path / "store", "single")
    return tmp_path / "store", {"multi": multi, "single": single}


def test_default_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCIKIT_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_store_path() == tmp_path / "data" / "ocikit" / "store"
    monkeypatch.setenv("OCIKIT_STORE", str(tmp_path / "elsewhere"))
    assert default_store_path() == tmp_path / "elsewhere"


def test_names_are_normalised_like_docker() -> None:
    assert normalize_name("busybox") == "docker.io/library/busybox:latest"
    assert normalize_name("demo:1") == "docker.io/library/demo:1"
    assert normalize_name("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    digest = "sha256:" + "a" * 64
    assert normalize_name(f"quay.io/x/y:tag@{digest}") == f"quay.io/x/y@{digest}"
    assert normalize_name(digest) == digest
    with pytest.raises(TransportError, match="invalid"):
        normalize_name("no spaces allowed")


def test_stored_image_has_layers_diff_ids_chain_ids_and_paths(
    stocked: tuple[Path, dict[str, BuiltImage]],
) -> None:
    root, built = stocked
    with ImageStore(root) as store:
        assert [n.name for n in store.names()] == [
            "example.com/multi:1",
            "docker.io/library/single:latest",
        ]
        image = store.image("example.com/multi:1", parse_platform("linux/arm64"))
        assert image.descriptor.digest == built["multi"].manifests["linux/arm64"]
        assert image.index is not None
        assert image.index.digest == built["multi"].top.digest
        assert str(image.platform) == "linux/arm64"
        assert len(image.layers) == 3
        for layer in image.layers:
            with layer.open() as blob:
                data = blob.read()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.descriptor.digest
            assert "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest() == layer.diff_id
        assert [layer.chain_id for layer in image.layers] == chain_ids([x.diff_id for x in image.layers])
        assert image.chain_id == image.layers[-1].chain_id
        assert image.size == image.descriptor.size + len(image.config.raw) + sum(x.size for x in image.layers)
        assert image.config.value.config is not None
        assert image.config.value.config.cmd == ["/bin/sh"]
        # The base layer is shared by both platforms, and stored once.
        amd = store.image("example.com/multi:1", parse_platform("linux/amd64"))
        assert amd.layers[0].path == image.layers[0].path
        assert [str(p) for p in store.platforms("example.com/multi:1")] == ["linux/amd64", "linux/arm64"]
        assert store.image("single").index is None
        assert store.image(built["single"].top.digest).name is None
        with pytest.raises(NotFound, match="no image for linux/s390x"):
            store.image("example.com/multi:1", parse_platform("linux/s390x"))
        with pytest.raises(NotFound, match="no image"):
            store.image("nothing-here")


def test_tag_and_remove(stocked: tuple[Path, dict[str, BuiltImage]]) -> None:
    root, built = stocked
    with ImageStore(root) as store:
        store.tag("single", "copy:2")
        assert store.resolve("copy:2").digest == built["single"].top.digest
        assert store.remove("single") == ["docker.io/library/single:latest"]
        assert store.resolve("copy:2")
        with pytest.raises(NotFound):
            store.remove("single")
        store.tag("copy:2", "third")
        removed = store.remove(built["single"].top.digest)
        assert sorted(removed) == ["docker.io/library/copy:2", "docker.io/library/third:latest"]
        with pytest.raises(TransportError, match="needs a tag"):
            store.tag("example.com/multi:1", "x@sha256:" + "b" * 64)


def test_skopeo_reads_the_store_by_its_names(stocked: tuple[Path, dict[str, BuiltImage]]) -> None:
    from conftest import require_tool
    from store_helpers import run

    skopeo = require_tool("skopeo")
    root, built = stocked
    out = json.loads(run(skopeo, "inspect", f"oci:{root}:docker.io/library/single:latest").stdout)
    assert out["Digest"] == built["single"].top.digest


def test_gc_keeps_everything_referenced(stocked: tuple[Path, dict[str, BuiltImage]], tmp_path: Path) -> None:
    root, built = stocked
    multi = built["multi"]
    signature, parts = referrer(multi.top, "application/vnd.example.sig", b"sig")
    for blob in [signature, *parts]:  # a referrer that is not listed anywhere: kept by its subject
        add_blob(root, blob)
    stray = Blob("application/octet-stream", b"nobody needs me")
    add_blob(root, stray)
    before = layout_files(root)
    with ImageStore(root) as store:
        report = collect_garbage(store.layout, grace=3600)
        assert report.removed == []
        assert report.kept_recent == 1
        old = time.time() - 7200
        os.utime(root / "blobs" / "sha256" / stray.digest.split(":")[1], (old, old))
        report = collect_garbage(store.layout, grace=3600, dry_run=True)
        assert report.removed == [stray.digest]
        assert layout_files(root) == before
        report = collect_garbage(store.layout, grace=3600)
        assert report.removed == [stray.digest]
        assert report.freed_bytes == len(stray.data)
        assert store.layout.validate() == []
        assert signature.digest in layout_files(root)
        # Without its name, the single image goes; the other image and the referrer stay.
        store.remove("single")
        report = collect_garbage(store.layout, grace=0)
        single_only = set(built["single"].blobs) - set(multi.blobs)
        assert set(report.removed) == single_only
        assert store.image("example.com/multi:1", parse_platform("linux/amd64"))
        remaining = layout_files(root)
        assert set(multi.blobs) | {signature.digest, *(p.digest for p in parts)} == set(remaining)


def test_referrers_in_the_store_go_with_their_image(tmp_path: Path) -> None:
    image = build_image("signed", ("amd64",))
    signature, parts = referrer(image.top, "application/vnd.example.sig", b"sig")
    write_layout(tmp_path / "src", {"v1": image}, extra=[signature.descriptor()])
    for blob in [signature, *parts]:
        add_blob(tmp_path / "src", blob)

    async def pull_signed() -> None:
        with OCILayout.open(tmp_path / "src") as source, ImageStore(tmp_path / "store") as store:
            destination = store.destination()
            await copy_image(source.source(), destination, "v1", tags=["x/signed:1"], with_referrers=True)

    asyncio.run(pull_signed())
    assert layout_files(tmp_path / "store") == layout_files(tmp_path / "src")
    with ImageStore(tmp_path / "store") as store:
        assert collect_garbage(store.layout, grace=0).removed == []
        store.remove("x/signed:1")
        report = collect_garbage(store.layout, grace=0)
        assert report.entries_dropped == 1
        assert layout_files(tmp_path / "store") == {}
        assert store.layout.read_index()["manifests"] == []
        assert store.layout.validate() == []


def test_fsck_finds_and_deletes_a_corrupt_blob(stocked: tuple[Path, dict[str, BuiltImage]]) -> None:
    root, _built = stocked
    with ImageStore(root) as store:
        assert check_blobs(store.layout).ok
        layer = store.image("single").layers[1]
        data = bytearray(layer.path.read_bytes())
        data[5] ^= 1
        layer.path.write_bytes(bytes(data))
        report = check_blobs(store.layout)
        assert [d for d, _ in report.corrupt] == [layer.descriptor.digest]
        assert report.removed == []
        report = check_blobs(store.layout, delete=True)
        assert report.removed == [layer.descriptor.digest]
        assert not layer.path.exists()
        report = check_blobs(store.layout)
        assert report.missing == [layer.descriptor.digest]
        assert not report.ok
    pull(root.parent / "src", "single", root, "single")  # a new pull repairs it
    with ImageStore(root) as store:
        assert check_blobs(store.layout).ok


_COPY_AND_DIE = """
import asyncio, os, signal, sys
from ocikit.store.copy import copy_image
from ocikit.store.images import ImageStore
from ocikit.store.layout import OCILayout

def die(event):
    if event.kind == "blob-done":
        os.kill(os.getpid(), signal.SIGKILL)  # a crash, mid-copy, with other blobs in flight

async def main():
    with OCILayout.open(sys.argv[1]) as source, ImageStore(sys.argv[2]) as store:
        await copy_image(source.source(), store.destination(), "big", tags=["example.com/big:1"],
                         progress=die if sys.argv[3] == "die" else None)

asyncio.run(main())
"""


def test_copy_killed_mid_way_leaves_a_consistent_store_and_a_rerun_finishes(tmp_path: Path) -> None:
    big = build_image("big", ("amd64", "arm64", "ppc64le"), payload=6 << 20)
    write_layout(tmp_path / "src", {"big": big})
    died = subprocess.run(
        [sys.executable, "-c", _COPY_AND_DIE, tmp_path / "src", tmp_path / "store", "die"], check=False
    )
    assert died.returncode == -9
    with ImageStore(tmp_path / "store") as store:
        assert store.names() == []  # nothing is named before everything is there
        assert store.layout.validate() == []  # and what is there is whole
        assert set(layout_files(tmp_path / "store")) < set(big.blobs)
    finished = subprocess.run(
        [sys.executable, "-c", _COPY_AND_DIE, tmp_path / "src", tmp_path / "store", "live"], check=False
    )
    assert finished.returncode == 0
    with ImageStore(tmp_path / "store") as store:
        assert store.resolve("example.com/big:1").digest == big.top.digest
        assert store.layout.validate() == []
        assert check_blobs(store.layout).ok
        report = collect_garbage(store.layout, grace=0)
        assert report.removed == []
        assert list((tmp_path / "store" / ".ocikit" / "incoming").iterdir()) == []
    assert layout_files(tmp_path / "store") == big.blobs


def test_gc_purges_staging_files_of_crashed_writes(tmp_path: Path) -> None:
    with ImageStore(tmp_path / "store") as store:
        incoming = tmp_path / "store" / ".ocikit" / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        leftover = incoming / "abc.123.tmp"
        leftover.write_bytes(b"half a blob")
        assert collect_garbage(store.layout, grace=3600).staging_purged == 0
        old = time.time() - 7200
        os.utime(leftover, (old, old))
        assert collect_garbage(store.layout, grace=3600).staging_purged == 1
        assert not leftover.exists()


_PULL = """
import asyncio, sys
from ocikit.store.copy import copy_image
from ocikit.store.images import ImageStore
from ocikit.store.layout import OCILayout

async def main():
    with OCILayout.open(sys.argv[1]) as source, ImageStore(sys.argv[2]) as store:
        for ref in sys.argv[3:]:
            await copy_image(source.source(), store.destination(), ref, tags=[f"example.com/{ref}:1"])

asyncio.run(main())
"""


def test_concurrent_copies_into_one_store(tmp_path: Path) -> None:
    """Processes copying images that share their base layer into one store: every name lands,
    every blob is whole."""
    images = {f"img{i}": build_image(f"img{i}") for i in range(6)}
    write_layout(tmp_path / "src", images)
    groups = [["img0", "img1", "img2"], ["img3", "img4", "img5"], ["img5", "img0", "img3"]]
    processes = [
        subprocess.Popen([sys.executable, "-c", _PULL, tmp_path / "src", tmp_path / "store", *group])
        for group in groups
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    with ImageStore(tmp_path / "store") as store:
        assert sorted(n.name for n in store.names()) == sorted(f"example.com/{name}:1" for name in images)
        assert store.layout.validate() == []
        assert check_blobs(store.layout).ok
    assert layout_files(tmp_path / "store") == {
        d: b for image in images.values() for d, b in image.blobs.items()
    }


def test_skopeo_writes_into_the_store(tmp_path: Path) -> None:
    from conftest import require_tool
    from store_helpers import run

    skopeo = require_tool("skopeo")
    image = build_image("fromskopeo")
    write_layout(tmp_path / "src", {"v1": image})
    ImageStore(tmp_path / "store").close()
    run(
        skopeo,
        "copy",
        "--all",
        f"oci:{tmp_path / 'src'}:v1",
        f"oci:{tmp_path / 'store'}:docker.io/library/sk:1",
    )
    with ImageStore(tmp_path / "store") as store:
        assert store.resolve("sk:1").digest == image.top.digest
        assert len(store.image("sk:1", parse_platform("linux/amd64")).layers) == 3
