"""The registry transport under the copy engine: a multi-platform, multi-layer image from an
OCI layout to ``ocikit serve``, from there to CNCF distribution and within one registry (by
mount), and back to a layout, byte for byte; skopeo reads what ocikit pushed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from client_servers import Distribution, start_distribution
from conftest import ServerProcess, require_tool
from ocikit.client import ClientOptions, RegistryDestination, RegistrySource
from ocikit.client.registry import open_registry
from ocikit.spec import parse_reference
from ocikit.store.copy import CopyResult, copy_image
from ocikit.store.layout import OCILayout
from ocikit.store.transport import ImageDestination, ImageSource
from store_helpers import BuiltImage, build_image, layout_files, referrer, write_layout

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    server = start_distribution(tmp_path_factory.mktemp("distribution-copy"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuiltImage]:
    path = tmp_path_factory.mktemp("source") / "layout"
    built = build_image("copy", payload=3 << 20)  # two platforms, three layers each, ~3 MiB apiece
    sbom, blobs = referrer(built.top, "application/vnd.example.sbom", b'{"packages": []}')
    write_layout(path, {"v1": built})
    for blob in [sbom, *blobs]:
        (path / "blobs" / "sha256" / blob.digest.split(":")[1]).write_bytes(blob.data)
    index = json.loads((path / "index.json").read_text())
    index["manifests"].append(sbom.descriptor())
    (path / "index.json").write_text(json.dumps(index))
    return path, built


def pull_from(text: str) -> ImageSource:
    """The registry source ``client.transports`` opens for ``docker://TEXT``."""
    source = open_registry(parse_reference(text), "source", {"client_options": ClientOptions()})
    assert isinstance(source, RegistrySource)
    return source


def push_to(text: str) -> ImageDestination:
    destination = open_registry(parse_reference(text), "destination", {})
    assert isinstance(destination, RegistryDestination)
    return destination


async def copy(
    source: ImageSource, destination: ImageDestination, reference: str | None, tags: list[str]
) -> CopyResult:
    try:
        return await copy_image(source, destination, reference, tags=tags, with_referrers=True)
    finally:
        await source.close()
        await destination.close()


def between(source: str, destination: str, tag: str) -> CopyResult:
    """A registry-to-registry copy, as ``ocikit copy docker://… docker://…`` makes it."""
    return run(copy(pull_from(source), push_to(destination), None, [tag]))


def layout_source(path: Path) -> ImageSource:
    return OCILayout.open(path).source(owned=True)


def layout_destination(path: Path) -> ImageDestination:
    return OCILayout.open(path, create=True).destination(owned=True)


def test_layout_to_ocikit_to_distribution_and_back_byte_for_byte(
    registry: ServerProcess, distribution: Distribution, image: tuple[Path, BuiltImage], tmp_path: Path
) -> None:
    path, built = image
    name = f"copy/{uuid.uuid4().hex[:8]}"
    up = run(copy(layout_source(path), push_to(f"{registry.host}/{name}:v1"), "v1", ["v1"]))
    assert up.descriptor.digest == built.top.digest
    assert up.referrers == 1
    across = between(f"{registry.host}/{name}:v1", f"{distribution.host}/{name}:v1", "v1")
    assert across.descriptor.digest == built.top.digest
    assert across.referrers == 1, "the referrers tag schema carries the SBOM on distribution"
    back = tmp_path / "back"
    down = run(copy(pull_from(f"{distribution.host}/{name}:v1"), layout_destination(back), None, ["v1"]))
    assert down.descriptor.digest == built.top.digest
    original, copied = layout_files(path), layout_files(back)
    assert copied == original, "every blob, manifest and referrer came back byte for byte"


def test_copy_within_a_registry_mounts_instead_of_uploading(
    registry: ServerProcess, image: tuple[Path, BuiltImage]
) -> None:
    path, built = image
    first, second = f"copy/{uuid.uuid4().hex[:8]}", f"copy/{uuid.uuid4().hex[:8]}"
    run(copy(layout_source(path), push_to(f"{registry.host}/{first}:v1"), "v1", ["v1"]))
    result = between(f"{registry.host}/{first}:v1", f"{registry.host}/{second}:v2", "v2")
    assert result.descriptor.digest == built.top.digest
    assert result.blobs_copied == 0, "every blob was mounted from the first repository"
    assert result.bytes_copied == 0
    assert result.blobs_skipped > 0


def test_skopeo_reads_an_index_ocikit_pushed(
    registry: ServerProcess, image: tuple[Path, BuiltImage], tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo", "an independent registry client")
    path, built = image
    name = f"copy/{uuid.uuid4().hex[:8]}"
    run(copy(layout_source(path), push_to(f"{registry.host}/{name}:v1"), "v1", ["v1"]))
    out = tmp_path / "skopeo"
    subprocess.run(
        [
            skopeo, "copy", "-q", "--all", "--preserve-digests", "--src-tls-verify=false",
            f"docker://{registry.host}/{name}:v1", f"oci:{out}:v1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == built.top.digest
    for digest, data in built.blobs.items():
        assert (out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == data
