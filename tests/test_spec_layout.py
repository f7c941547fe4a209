"""Whole image layouts (image-layout.md), built in tmp_path and checked by store.layout_check."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ocikit.spec import mediatype as mt
from ocikit.spec.digest import digest_of
from ocikit.store.layout_check import validate_layout


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2).encode()


@dataclass
class Layout:
    """A small layout on disk: one image (config + one layer) referenced from index.json."""

    root: Path

    def blob(self, content: bytes) -> str:
        digest = digest_of(content)
        path = self.root / "blobs" / "sha256" / digest.encoded
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return digest

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.root / "blobs" / algorithm / encoded

    def descriptor(self, media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.blob(content), "size": len(content), **extra}

    def write_index(self, *manifests: dict[str, Any]) -> None:
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": list(manifests)}
        (self.root / "index.json").write_bytes(_json(index))

    def image(self, *, layers: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
        """Write an image's blobs and return the descriptor of its manifest."""
        layer = b"not really a tar, but a layout does not look inside layers"
        config = {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": self.descriptor(mt.OCI_CONFIG, _json(config)),
            "layers": layers if layers is not None else [self.descriptor(mt.OCI_LAYER, layer)],
            **fields,
        }
        return self.descriptor(mt.OCI_MANIFEST, _json(manifest))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    (tmp_path / "blobs").mkdir()
    (tmp_path / "oci-layout").write_bytes(b'{"imageLayoutVersion": "1.0.0"}')
    built = Layout(tmp_path)
    built.write_index(built.image())
    return built


def _manifest_digest(layout: Layout) -> str:
    index = json.loads((layout.root / "index.json").read_bytes())
    digest: str = index["manifests"][0]["digest"]
    return digest


def _layer_digest(layout: Layout) -> str:
    manifest = json.loads(layout.blob_path(_manifest_digest(layout)).read_bytes())
    digest: str = manifest["layers"][0]["digest"]
    return digest


def rules(violations: list[Any]) -> str:
    return "\n".join(str(v) for v in violations)


def test_valid_layout_passes(layout: Layout) -> None:
    assert validate_layout(layout.root) == []


def test_the_oci_layout_file_stands_for_its_directory(layout: Layout) -> None:
    assert validate_layout(layout.root / "oci-layout") == []


def test_a_path_that_is_not_a_layout_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        validate_layout(tmp_path / "absent")


def test_empty_blobs_dir_and_index_are_valid(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    (tmp_path / "blobs").mkdir()
    (tmp_path / "oci-layout").write_bytes(b'{"imageLayoutVersion": "1.0.0"}')
    layout.write_index()
    assert validate_layout(tmp_path) == []


def test_missing_blob(layout: Layout) -> None:
    layout.blob_path(_layer_digest(layout)).unlink()
    assert "missing" in rules(validate_layout(layout.root))


def test_blob_with_wrong_content(layout: Layout) -> None:
    path = layout.blob_path(_layer_digest(layout))
    content = path.read_bytes()
    path.write_bytes(content[:-1] + b"!")
    assert "does not match its digest" in rules(validate_layout(layout.root))


def test_blob_with_wrong_size(layout: Layout) -> None:
    path = layout.blob_path(_layer_digest(layout))
    path.write_bytes(path.read_bytes() + b"\n")
    report = rules(validate_layout(layout.root))
    assert "the descriptor says" in report


def test_bad_blob_filename(layout: Layout) -> None:
    (layout.root / "blobs" / "sha256" / "NOT-A-DIGEST").write_bytes(b"x")
    report = validate_layout(layout.root)
    assert [v.path for v in report] == ["blobs/sha256/NOT-A-DIGEST"]


def test_bad_algorithm_directory(layout: Layout) -> None:
    (layout.root / "blobs" / "SHA256").mkdir()
    (layout.root / "blobs" / "SHA256" / digest_of(b"x").encoded).write_bytes(b"x")
    assert "not a digest" in rules(validate_layout(layout.root))


def test_stray_blob_with_wrong_content(layout: Layout) -> None:
    (layout.root / "blobs" / "sha256" / digest_of(b"x").encoded).write_bytes(b"y")
    assert "does not match its digest" in rules(validate_layout(layout.root))


def test_manifest_whose_media_type_conflicts_with_its_descriptor(layout: Layout) -> None:
    manifest = layout.image(mediaType=mt.DOCKER_MANIFEST)
    manifest["mediaType"] = mt.OCI_MANIFEST
    layout.write_index(manifest)
    assert "mediaType conflict" in rules(validate_layout(layout.root))


@pytest.mark.parametrize("name", ["oci-layout", "index.json"])
def test_missing_required_file(layout: Layout, name: str) -> None:
    (layout.root / name).unlink()
    assert [v.path for v in validate_layout(layout.root)] == [name]


def test_missing_blobs_directory(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_bytes(b'{"imageLayoutVersion": "1.0.0"}')
    Layout(tmp_path).write_index()
    assert [v.path for v in validate_layout(tmp_path)] == ["blobs"]


def test_invalid_header_and_index(layout: Layout) -> None:
    (layout.root / "oci-layout").write_bytes(b'{"imageLayoutVersion": "2.0.0"}')
    (layout.root / "index.json").write_bytes(b'{"schemaVersion": 2}')
    paths = [v.path for v in validate_layout(layout.root)]
    assert "oci-layout: $.imageLayoutVersion" in paths
    assert "index.json: $.manifests" in paths


def test_index_json_that_is_not_json(layout: Layout) -> None:
    (layout.root / "index.json").write_bytes(b"\x00\xff")
    assert [v.path for v in validate_layout(layout.root)] == ["index.json: $"]


def test_symlinked_blob_is_refused(layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = layout.blob_path(_layer_digest(layout))
    outside = tmp_path_factory.mktemp("outside") / "layer"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    assert "not a regular file" in rules(validate_layout(layout.root))


def test_symlinked_index_is_refused(layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "index.json"
    outside.write_bytes((layout.root / "index.json").read_bytes())
    (layout.root / "index.json").unlink()
    (layout.root / "index.json").symlink_to(outside)
    assert [v.path for v in validate_layout(layout.root)] == ["index.json"]


def test_nested_index_is_followed(layout: Layout) -> None:
    inner_manifest = layout.image(annotations={"which": "inner"})
    inner_index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [inner_manifest]}
    layout.write_index(layout.descriptor(mt.OCI_INDEX, _json(inner_index)))
    assert validate_layout(layout.root) == []
    layout.blob_path(_layer_digest_of(layout, inner_manifest)).unlink()
    assert "missing" in rules(validate_layout(layout.root))


def _layer_digest_of(layout: Layout, manifest_descriptor: dict[str, Any]) -> str:
    manifest = json.loads(layout.blob_path(manifest_descriptor["digest"]).read_bytes())
    digest: str = manifest["layers"][0]["digest"]
    return digest


def test_invalid_manifest_inside_the_layout_is_reported_with_its_blob(layout: Layout) -> None:
    manifest = layout.image(schemaVersion=1)
    layout.write_index(manifest)
    paths = [v.path for v in validate_layout(layout.root)]
    assert f"blobs/sha256/{manifest['digest'].partition(':')[2]}: $.schemaVersion" in paths


def test_invalid_config_inside_the_layout_is_reported(layout: Layout) -> None:
    config = _json({"architecture": "amd64", "os": 1, "rootfs": {"type": "layers", "diff_ids": []}})
    layer = layout.descriptor(mt.OCI_LAYER, b"layer")
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": layout.descriptor(mt.OCI_CONFIG, config),
        "layers": [layer],
    }
    layout.write_index(layout.descriptor(mt.OCI_MANIFEST, _json(manifest)))
    assert any(v.path.endswith(": $.os") for v in validate_layout(layout.root))


def test_layers_with_urls_may_be_absent(layout: Layout) -> None:
    foreign = {
        "mediaType": mt.OCI_LAYER_GZIP,
        "digest": digest_of(b"hosted elsewhere"),
        "size": 16,
        "urls": ["https://example.com/layer.tar.gz"],
    }
    layout.write_index(layout.image(layers=[foreign]))
    assert validate_layout(layout.root) == []


def test_non_distributable_layers_may_be_absent(layout: Layout) -> None:
    foreign = {"mediaType": mt.OCI_LAYER_NONDISTRIBUTABLE_GZIP, "digest": digest_of(b"licensed"), "size": 8}
    layout.write_index(layout.image(layers=[foreign]))
    assert validate_layout(layout.root) == []


def test_layers_with_urls_are_still_verified_when_present(layout: Layout) -> None:
    foreign = layout.descriptor(mt.OCI_LAYER_GZIP, b"present", urls=["https://example.com/l"])
    layout.blob_path(foreign["digest"]).write_bytes(b"tampered")
    layout.write_index(layout.image(layers=[foreign]))
    assert rules(validate_layout(layout.root))


def test_ordinary_layers_may_not_be_absent(layout: Layout) -> None:
    absent = {"mediaType": mt.OCI_LAYER_GZIP, "digest": digest_of(b"nowhere"), "size": 7}
    layout.write_index(layout.image(layers=[absent]))
    assert "missing" in rules(validate_layout(layout.root))


def test_unregistered_algorithm_blobs_are_accepted(layout: Layout) -> None:
    directory = layout.root / "blobs" / "sha256+b64u"
    directory.mkdir()
    (directory / "LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564").write_bytes(b"anything")
    assert validate_layout(layout.root) == []


def test_unreadable_layout_entries_do_not_crash(layout: Layout) -> None:
    os.mkfifo(layout.root / "blobs" / "sha256" / digest_of(b"fifo").encoded)
    assert "not a regular file" in rules(validate_layout(layout.root))


def test_a_chain_of_two_thousand_indexes_is_checked_not_crashed_on(layout: Layout) -> None:
    """Each index lists the next: deeper than Python's recursion limit, so the check walks it
    with a loop; the image at the bottom is still checked (a broken layer is reported)."""
    image = layout.image()
    layer_digest = json.loads(layout.blob_path(image["digest"]).read_bytes())["layers"][0]["digest"]
    layout.blob_path(layer_digest).write_bytes(b"tampered")
    child = image
    for _ in range(2000):
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [child]}
        child = layout.descriptor(mt.OCI_INDEX, _json(index))
    layout.write_index(child)
    violations = validate_layout(layout.root)
    assert any("layers[0]" in v.path for v in violations), violations[:3]
