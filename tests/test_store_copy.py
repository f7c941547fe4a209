"""The copy engine: byte-for-byte copies of whole indexes or one platform, referrers, skipped
blobs, progress, and sources that lie (wrong digest or size, truncated, bad JSON, a media
type that contradicts its descriptor) refused with nothing stored."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ocikit.spec import Descriptor, VerificationError, parse_platform
from ocikit.store.copy import CopyError, CopyEvent, CopyResult, copy_image
from ocikit.store.layout import OCILayout
from ocikit.store.transport import NotFound
from store_helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    Blob,
    add_blob,
    build_image,
    dumps,
    layout_files,
    referrer,
    tagged,
    write_layout,
)


def copy(source: Path, ref: str | None, target: Path, tags: list[str], **options: Any) -> CopyResult:
    async def work() -> CopyResult:
        with OCILayout.open(source) as src, OCILayout.open(target, create=True) as dst:
            return await copy_image(src.source(), dst.destination(), ref, tags=tags, **options)

    return asyncio.run(work())


def test_whole_index_is_copied_byte_for_byte(tmp_path: Path) -> None:
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    events: list[CopyEvent] = []
    result = copy(tmp_path / "src", "v1", tmp_path / "dst", ["v1"], progress=events.append)
    assert layout_files(tmp_path / "dst") == image.blobs
    assert tagged(tmp_path / "dst", "v1")["digest"] == image.top.digest
    assert result.descriptor.digest == image.top.digest
    # 2 configs + 1 shared base + 2x2 own layers, each transferred once.
    assert (result.manifests, result.blobs_copied, result.blobs_skipped) == (3, 7, 0)
    done = [e.digest for e in events if e.kind == "blob-done"]
    assert len(done) == len(set(done)) == 7
    # Children before parents: every blob before the first manifest of that image, the index last.
    manifests = [e.digest for e in events if e.kind == "manifest"]
    assert manifests[-1] == image.top.digest
    assert set(manifests[:-1]) == set(image.manifests.values())
    with OCILayout.open(tmp_path / "dst") as layout:
        assert layout.validate() == []


def test_second_copy_skips_every_blob(tmp_path: Path) -> None:
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    copy(tmp_path / "src", "v1", tmp_path / "dst", ["a"])
    result = copy(tmp_path / "src", "v1", tmp_path / "dst", ["b"], concurrency=1)
    assert (result.blobs_copied, result.blobs_skipped) == (0, 7)
    assert tagged(tmp_path / "dst", "b")["digest"] == image.top.digest


def test_platform_copies_only_the_chosen_manifest(tmp_path: Path) -> None:
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    result = copy(
        tmp_path / "src", "v1", tmp_path / "dst", ["arm"], platform=parse_platform("linux/arm64/v8")
    )
    arm = image.manifests["linux/arm64"]
    assert result.descriptor.digest == arm
    assert tagged(tmp_path / "dst", "arm") == {
        "mediaType": OCI_MANIFEST,
        "digest": arm,
        "size": len(image.blobs[arm]),
        "annotations": {REF_NAME: "arm"},
    }
    copied = layout_files(tmp_path / "dst")
    assert image.top.digest not in copied
    assert image.manifests["linux/amd64"] not in copied
    assert len(copied) == 5  # manifest, config, three layers
    with pytest.raises(
        CopyError, match=r"no manifest for linux/s390x \(it offers: linux/amd64, linux/arm64\)"
    ):
        copy(tmp_path / "src", "v1", tmp_path / "dst", ["s"], platform=parse_platform("linux/s390x"))


def test_referrers_come_along_when_asked(tmp_path: Path) -> None:
    image = build_image()
    signature, parts = referrer(image.top, "application/vnd.example.signature", b"signed!")
    sbom, sbom_parts = referrer(signature, "application/vnd.example.sbom", b"sbom of the signature")
    write_layout(tmp_path / "src", {"v1": image}, extra=[signature.descriptor(), sbom.descriptor()])
    for blob in [signature, sbom, *parts, *sbom_parts]:
        add_blob(tmp_path / "src", blob)
    copy(tmp_path / "src", "v1", tmp_path / "plain", ["v1"])
    assert signature.digest not in layout_files(tmp_path / "plain")
    result = copy(tmp_path / "src", "v1", tmp_path / "dst", ["v1"], with_referrers=True, concurrency=1)
    assert result.referrers == 2
    assert layout_files(tmp_path / "dst") == layout_files(tmp_path / "src")
    listed = [e["digest"] for e in json.loads((tmp_path / "dst" / "index.json").read_text())["manifests"]]
    assert set(listed) == {image.top.digest, signature.digest, sbom.digest}

    async def found() -> list[str | None]:
        with OCILayout.open(tmp_path / "dst") as layout:
            descriptors = await layout.source().referrers(Descriptor(**_plain(image.top)))
            return [d.artifact_type for d in descriptors]

    assert asyncio.run(found()) == ["application/vnd.example.signature"]


def _plain(blob: Blob) -> dict[str, Any]:
    return {"media_type": blob.media_type, "digest": blob.digest, "size": len(blob.data)}


def _lying_layout(path: Path, mutate: Any) -> tuple[Path, Any]:
    image = build_image("liar")
    write_layout(path, {"v1": image})
    mutate(path, image)
    return path, image


def _blob_file(path: Path, digest: str) -> Path:
    return path / "blobs" / "sha256" / digest.split(":")[1]


def _layer(image: Any) -> str:
    manifest = json.loads(image.blobs[image.manifests["linux/arm64"]])
    return str(manifest["layers"][-1]["digest"])


def _wrong_content(path: Path, image: Any) -> None:
    target = _blob_file(path, _layer(image))
    data = bytearray(target.read_bytes())
    data[10] ^= 0xFF
    target.write_bytes(bytes(data))


def _truncated(path: Path, image: Any) -> None:
    target = _blob_file(path, _layer(image))
    target.write_bytes(target.read_bytes()[:-20])


def _wrong_size(path: Path, image: Any) -> None:
    """The manifest lies about a layer's size (and is itself correctly named)."""
    old = image.manifests["linux/arm64"]
    manifest = json.loads(image.blobs[old])
    manifest["layers"][-1]["size"] += 3
    _replace_child(path, image, old, Blob(OCI_MANIFEST, dumps(manifest)))


def _replace_child(path: Path, image: Any, old: str, new: Blob) -> None:
    add_blob(path, new)
    index = json.loads(image.blobs[image.top.digest])
    for child in index["manifests"]:
        if child["digest"] == old:
            child.update(digest=new.digest, size=len(new.data))
    top = Blob(OCI_INDEX, dumps(index))
    add_blob(path, top)
    (path / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [top.descriptor(annotations={REF_NAME: "v1"})]})
    )


def _bad_json(path: Path, image: Any) -> None:
    _replace_child(
        path, image, image.manifests["linux/arm64"], Blob(OCI_MANIFEST, b'{"schemaVersion": 2, "layers": [')
    )


def _media_type_conflict(path: Path, image: Any) -> None:
    """index.json calls the index a manifest."""
    entry = image.top.descriptor(annotations={REF_NAME: "v1"})
    entry["mediaType"] = OCI_MANIFEST
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def _wrong_manifest_digest(path: Path, image: Any) -> None:
    target = _blob_file(path, image.manifests["linux/amd64"])
    data = target.read_bytes()
    lie = data.replace(b'"schemaVersion": 2', b'"schemaVersion":2 ')  # same size, valid JSON
    assert lie != data
    target.write_bytes(lie)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (_wrong_content, VerificationError, "digest mismatch"),
        (_truncated, VerificationError, "size mismatch"),
        (_wrong_size, VerificationError, "size mismatch"),
        (_bad_json, CopyError, "is not valid JSON"),
        (_media_type_conflict, CopyError, "media type conflict"),
        (_wrong_manifest_digest, VerificationError, "digest mismatch"),
    ],
)
def test_a_lying_source_stores_nothing(
    tmp_path: Path, mutate: Any, error: type[Exception], message: str
) -> None:
    source, _ = _lying_layout(tmp_path / "src", mutate)
    with pytest.raises(error, match=message):
        copy(source, "v1", tmp_path / "dst", ["v1"])
    with OCILayout.open(tmp_path / "dst") as layout:
        assert layout.read_index()["manifests"] == []
        assert layout.validate() == []  # whatever blobs did arrive are intact
    assert list((tmp_path / "dst" / ".ocikit" / "incoming").iterdir()) == []


def test_missing_blob_is_reported(tmp_path: Path) -> None:
    image = build_image("gap", ("amd64",))
    write_layout(tmp_path / "src", {"v1": image})
    layer = json.loads(image.blobs[image.top.digest])["layers"][0]["digest"]
    _blob_file(tmp_path / "src", layer).unlink()
    with pytest.raises(NotFound, match=f"blob {layer} is missing"):
        copy(tmp_path / "src", "v1", tmp_path / "dst", ["v1"])
