"""``oci-archive``: read in place from skopeo's tarballs, written so skopeo reads them, and an
image that travels layout -> archive -> store -> layout arrives byte for byte."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from conftest import require_tool
from ocikit.store.archive import ArchiveDestination, ArchiveSource
from ocikit.store.copy import copy_image
from ocikit.store.images import ImageStore
from ocikit.store.layout import OCILayout
from ocikit.store.transport import TransportError
from store_helpers import build_image, layout_files, run, tagged, write_layout


def _to_archive(layout: Path, ref: str, archive: Path, tag: str | None) -> None:
    async def work() -> None:
        destination = ArchiveDestination(archive)
        try:
            with OCILayout.open(layout) as source:
                await copy_image(source.source(), destination, ref, tags=[tag] if tag else [])
        finally:
            await destination.close()

    asyncio.run(work())


def _from_archive(archive: Path, ref: str | None, layout: Path, tag: str) -> None:
    async def work() -> None:
        source = ArchiveSource(archive)
        try:
            with OCILayout.open(layout, create=True) as target:
                await copy_image(source, target.destination(), ref, tags=[tag])
        finally:
            await source.close()

    asyncio.run(work())


def test_byte_identity_layout_archive_store_layout(tmp_path: Path) -> None:
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    _to_archive(tmp_path / "src", "v1", tmp_path / "image.tar", "v1")
    with tarfile.open(tmp_path / "image.tar") as tar:
        members = tar.getnames()
    assert members[:2] == ["oci-layout", "index.json"]
    assert [m for m in members if m.startswith("blobs/sha256/") and len(m) > 20] == sorted(
        "blobs/sha256/" + d.split(":")[1] for d in image.blobs
    )

    async def into_store_and_out() -> None:
        source = ArchiveSource(tmp_path / "image.tar")
        with ImageStore(tmp_path / "store") as store:
            await copy_image(source, store.destination(), "v1", tags=["example.com/demo:1"])
            await source.close()
            with OCILayout.open(tmp_path / "out", create=True) as out:
                await copy_image(store.source(), out.destination(), "example.com/demo:1", tags=["back"])

    asyncio.run(into_store_and_out())
    assert layout_files(tmp_path / "out") == image.blobs
    assert layout_files(tmp_path / "store") == image.blobs
    assert tagged(tmp_path / "out", "back")["digest"] == image.top.digest


def test_skopeo_reads_our_archive_and_we_read_skopeos(tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    _to_archive(tmp_path / "src", "v1", tmp_path / "ours.tar", "t")
    inspected = json.loads(run(skopeo, "inspect", "--raw", f"oci-archive:{tmp_path / 'ours.tar'}:t").stdout)
    assert inspected == json.loads(image.blobs[image.top.digest])
    run(skopeo, "copy", "--all", f"oci-archive:{tmp_path / 'ours.tar'}:t", f"oci:{tmp_path / 'sk'}:t")
    assert layout_files(tmp_path / "sk") == image.blobs

    run(skopeo, "copy", "--all", f"oci:{tmp_path / 'src'}:v1", f"oci-archive:{tmp_path / 'theirs.tar'}:s")
    _from_archive(tmp_path / "theirs.tar", "s", tmp_path / "read", "r")
    assert layout_files(tmp_path / "read") == image.blobs
    # An archive of a single untagged image needs no reference.
    run(skopeo, "copy", f"oci:{tmp_path / 'src'}:v1", f"oci-archive:{tmp_path / 'one.tar'}")
    _from_archive(tmp_path / "one.tar", None, tmp_path / "one", "o")
    assert tagged(tmp_path / "one", "o")["digest"] in image.manifests.values()


def test_archive_members_are_looked_up_by_exact_name_only(tmp_path: Path) -> None:
    image = build_image("evil", ("amd64",))
    write_layout(tmp_path / "src", {"v1": image})
    _to_archive(tmp_path / "src", "v1", tmp_path / "good.tar", "v1")
    victim = next(d for d in image.blobs if d != image.top.digest)
    name = "blobs/sha256/" + victim.split(":")[1]
    # Rebuild the archive with that blob as a symlink to a file outside, plus a traversal member.
    with tarfile.open(tmp_path / "good.tar") as good, tarfile.open(tmp_path / "evil.tar", "w") as evil:
        for member in good.getmembers():
            if member.name == name:
                link = tarfile.TarInfo(name)
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                evil.addfile(link)
            else:
                evil.addfile(member, good.extractfile(member) if member.isreg() else None)
        bad = tarfile.TarInfo("../../outside")
        bad.size = 3
        evil.addfile(bad, io.BytesIO(b"bad"))
    with pytest.raises(TransportError, match=f"blob {victim} is missing"):
        _from_archive(tmp_path / "evil.tar", "v1", tmp_path / "dst", "v1")
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.compress, lzma.compress, bz2.compress])
def test_compressed_archives_are_read_too(tmp_path: Path, compress: Callable[[bytes], bytes]) -> None:
    image = build_image("packed")
    write_layout(tmp_path / "src", {"v1": image})
    _to_archive(tmp_path / "src", "v1", tmp_path / "plain.tar", "v1")
    (tmp_path / "packed.tar.x").write_bytes(compress((tmp_path / "plain.tar").read_bytes()))
    _from_archive(tmp_path / "packed.tar.x", "v1", tmp_path / "dst", "v1")
    assert layout_files(tmp_path / "dst") == image.blobs


def test_a_decompression_bomb_is_stopped_at_the_limit(tmp_path: Path) -> None:
    image = build_image("bomb")
    write_layout(tmp_path / "src", {"v1": image})
    _to_archive(tmp_path / "src", "v1", tmp_path / "plain.tar", "v1")
    plain = (tmp_path / "plain.tar").read_bytes()
    # The archive followed by 64 MiB of zeros: 64 KiB compressed, far past a 1 MiB limit.
    (tmp_path / "bomb.tar.gz").write_bytes(gzip.compress(plain + bytes(64 << 20)))
    with pytest.raises(TransportError, match="decompresses to more than 1048576 bytes"):
        ArchiveSource(tmp_path / "bomb.tar.gz", max_size=1 << 20)
    source = ArchiveSource(tmp_path / "bomb.tar.gz")  # within the default limit it reads
    asyncio.run(source.close())


@pytest.mark.parametrize("header", ["gnu-long-name", "pax"])
def test_a_header_claiming_megabytes_is_refused_not_read(tmp_path: Path, header: str) -> None:
    """A GNU long name or PAX header is read whole by tarfile: 16 MiB of one compress to 16 KiB,
    and gigabytes to a few megabytes. The scan refuses it instead of holding it in memory."""
    member = tarfile.TarInfo("x" * (16 << 20) if header == "gnu-long-name" else "x")
    member.pax_headers = {} if header == "gnu-long-name" else {"comment": "y" * (16 << 20)}
    buffer = io.BytesIO()
    form = tarfile.GNU_FORMAT if header == "gnu-long-name" else tarfile.PAX_FORMAT
    with tarfile.open(fileobj=buffer, mode="w", format=form) as tar:
        tar.addfile(member, io.BytesIO(b""))
        layout = tarfile.TarInfo("oci-layout")
        tar.addfile(layout, io.BytesIO(b""))
    (tmp_path / "bomb.tar.gz").write_bytes(gzip.compress(buffer.getvalue()))
    with pytest.raises(TransportError, match=r"not a tar archive: a header of \d+ bytes"):
        ArchiveSource(tmp_path / "bomb.tar.gz")


def test_an_export_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    """The temporary archive is created anew under a name nobody can guess: a symlink planted
    where an earlier version would have written leaves its target untouched."""
    image = build_image("planted")
    write_layout(tmp_path / "src", {"v1": image})
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / f".out.tar.{os.getpid()}.tmp").symlink_to(victim)  # the name a pid would give
    _to_archive(tmp_path / "src", "v1", tmp_path / "out.tar", "v1")
    assert victim.read_text() == "precious"
    assert tarfile.is_tarfile(tmp_path / "out.tar")


def test_foreign_files_are_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TransportError, match=r"not a tar archive|no image layout"):
        ArchiveSource(tmp_path / "notes.txt")
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b\x08\x00rest")
    with pytest.raises(TransportError, match="cannot decompress the gzip archive"):
        ArchiveSource(tmp_path / "x.tar.gz")
    with pytest.raises(TransportError, match="cannot open"):
        ArchiveSource(tmp_path / "absent.tar")


def test_failed_copy_leaves_no_archive_and_no_staging(tmp_path: Path) -> None:
    image = build_image("broken", ("amd64",))
    write_layout(tmp_path / "src", {"v1": image})
    layer = json.loads(image.blobs[image.top.digest])["layers"][0]["digest"]
    (tmp_path / "src" / "blobs" / "sha256" / layer.split(":")[1]).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="size mismatch"):
        _to_archive(tmp_path / "src", "v1", tmp_path / "out.tar", "v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # Same size, wrong bytes: local blobs are verified as they land in the archive, at commit.
    good = image.blobs[layer]
    blob = tmp_path / "src" / "blobs" / "sha256" / layer.split(":")[1]
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="digest mismatch"):
        _to_archive(tmp_path / "src", "v1", tmp_path / "out.tar", "v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
