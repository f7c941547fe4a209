"""The image commands against real registries, through the CLI: ``ocikit copy`` from an OCI
layout to ``ocikit serve``, on to CNCF distribution and back to a layout byte for byte;
``ocikit pull`` and ``ocikit push`` through the local store; skopeo reads what ocikit wrote."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_servers import Distribution, start_distribution
from conftest import OCIKIT, ServerProcess, require_tool
from store_helpers import BuiltImage, build_image, layout_files, write_layout


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    server = start_distribution(tmp_path_factory.mktemp("distribution-cli"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuiltImage]:
    path = tmp_path_factory.mktemp("cli-source") / "layout"
    built = build_image("cli", payload=1 << 20)
    write_layout(path, {"v1": built})
    return path, built


def ocikit(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*OCIKIT, *args], capture_output=True, text=True, env={**os.environ, "OCIKIT_STORE": str(store)}
    )
    assert result.returncode == 0, f"ocikit {' '.join(args)}:\n{result.stderr}"
    return result


def test_layout_to_ocikit_serve_to_distribution_and_back_byte_for_byte(
    tmp_path: Path, source: tuple[Path, BuiltImage], registry: ServerProcess, distribution: Distribution
) -> None:
    path, built = source
    store = tmp_path / "store"
    ours = f"docker://{registry.host}/cli/image:v1"
    theirs = f"docker://{distribution.host}/cli/image:v1"
    ocikit(store, "copy", "-q", f"oci:{path}:v1", ours)
    ocikit(store, "copy", "-q", ours, theirs)
    ocikit(store, "copy", "-q", theirs, f"oci:{tmp_path / 'back'}:v1")
    assert layout_files(tmp_path / "back") == layout_files(path)
    skopeo = require_tool("skopeo", "cross-checks what ocikit pushed")
    for location in (ours, theirs):
        raw = subprocess.run(
            [skopeo, "inspect", "--tls-verify=false", "--raw", location], capture_output=True, check=True
        ).stdout
        assert raw == built.blobs[built.top.digest]


def test_pull_then_push_through_the_local_store(
    tmp_path: Path, source: tuple[Path, BuiltImage], registry: ServerProcess, distribution: Distribution
) -> None:
    path, built = source
    store = tmp_path / "store"
    ocikit(store, "copy", "-q", f"oci:{path}:v1", f"docker://{registry.host}/cli/pulled:1")
    ocikit(store, "pull", "-q", "--platform", "linux/amd64", f"{registry.host}/cli/pulled:1")
    names = json.loads(ocikit(store, "images", "--format", "json").stdout)
    assert [entry["name"] for entry in names] == [f"{registry.host}/cli/pulled:1"]
    ocikit(store, "push", "-q", f"{registry.host}/cli/pulled:1", f"docker://{distribution.host}/cli/pushed:1")
    amd64 = built.manifests["linux/amd64"]
    skopeo = require_tool("skopeo", "cross-checks what ocikit pushed")
    raw = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{distribution.host}/cli/pushed:1"],
        capture_output=True,
        check=True,
    ).stdout
    assert raw == built.blobs[amd64]
