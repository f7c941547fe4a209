"""The image commands end to end, as a user runs them: copy, images, inspect, tag, rmi, fsck,
gc; JSON output for scripts; one-line errors (never a traceback) for bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import OCIKIT, ServerProcess, free_port, require_tool
from ocikit.client.transports import parse_transport
from ocikit.store.transport import TransportError
from store_helpers import BuiltImage, build_image, layout_files, tagged, write_layout

DIGEST = "sha256:" + "c" * 64


def ocikit(store: Path, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OCIKIT_STORE": str(store)}
    result = subprocess.run(
        [*OCIKIT, *map(str, args)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if ok:
        assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, BuiltImage]:
    image = build_image()
    write_layout(tmp_path / "src", {"v1": image})
    return tmp_path / "src", image


@pytest.mark.parametrize(
    ("text", "kind", "location", "reference", "tags"),
    [
        ("oci:/data/layout", "oci", "/data/layout", None, []),
        ("oci:/data/layout:v1", "oci", "/data/layout", "v1", ["v1"]),
        ("oci:rel:docker.io/library/x:1", "oci", "rel", "docker.io/library/x:1", ["docker.io/library/x:1"]),
        (f"oci:dir:{DIGEST}", "oci", "dir", DIGEST, []),
        ("oci-archive:img.tar", "oci-archive", "img.tar", None, []),
        ("oci-archive:img.tar:t", "oci-archive", "img.tar", "t", ["t"]),
        ("docker://busybox", "docker", "docker.io/library/busybox", "latest", ["latest"]),
        ("docker://localhost:5000/a/b:2", "docker", "localhost:5000/a/b", "2", ["2"]),
        (f"docker://ghcr.io/o/r@{DIGEST}", "docker", "ghcr.io/o/r", DIGEST, []),
        ("busybox", "store", "", "docker.io/library/busybox:latest", ["docker.io/library/busybox:latest"]),
        ("demo:1", "store", "", "docker.io/library/demo:1", ["docker.io/library/demo:1"]),
        (DIGEST, "store", "", DIGEST, []),
    ],
)
def test_transport_strings(
    text: str, kind: str, location: str, reference: str | None, tags: list[str]
) -> None:
    spec = parse_transport(text)
    assert (spec.kind, spec.location, spec.reference, spec.tags) == (kind, location, reference, tags)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("oci:", "the path is empty"),
        ("docker://Bad Name", "must be lower case"),
        ("dir:/tmp/x", "dir transport is not supported"),
        ("containers-storage:x", "not supported"),
        ("what is this", "invalid"),
    ],
)
def test_bad_transport_strings(text: str, message: str) -> None:
    with pytest.raises(TransportError, match=message):
        parse_transport(text)


def test_copy_images_inspect_tag_rmi(tmp_path: Path, source: tuple[Path, BuiltImage]) -> None:
    path, image = source
    store = tmp_path / "store"
    out = ocikit(store, "copy", f"oci:{path}:v1", "demo:1")
    assert out.stdout.strip() == image.top.digest
    ocikit(store, "copy", "--platform", "linux/arm64", f"oci:{path}:v1", "demo:arm")
    listed = json.loads(ocikit(store, "images", "--format", "json").stdout)
    assert [(x["name"], x["platforms"]) for x in listed] == [
        ("docker.io/library/demo:1", ["linux/amd64", "linux/arm64"]),
        ("docker.io/library/demo:arm", ["linux/arm64"]),
    ]
    assert listed[0]["size"] == sum(len(b) for b in image.blobs.values())
    table = ocikit(store, "images").stdout.splitlines()
    assert table[0].split() == ["NAME", "DIGEST", "PLATFORMS", "SIZE"]
    assert table[1].startswith("docker.io/library/demo:1 ")
    assert ocikit(store, "images", "-q").stdout.split() == [
        "docker.io/library/demo:1",
        "docker.io/library/demo:arm",
    ]

    raw = ocikit(store, "inspect", "--raw", "demo:1").stdout.encode()
    assert raw == image.blobs[image.top.digest]
    described = json.loads(ocikit(store, "inspect", "--format", "json", "demo:1").stdout)
    assert described["platforms"] == ["linux/amd64", "linux/arm64"]
    assert [len(m["layers"]) for m in described["manifests"]] == [3, 3]
    assert described["manifests"][1]["config"]["value"]["architecture"] == "arm64"
    config = json.loads(ocikit(store, "inspect", "--config", "--platform", "linux/arm64", "demo:1").stdout)
    assert config["architecture"] == "arm64"
    text = ocikit(store, "inspect", f"oci:{path}:v1").stdout
    assert "Platforms:  linux/amd64, linux/arm64" in text
    assert ocikit(store, "inspect", "--config", "demo:1", ok=False).returncode == 2

    ocikit(store, "tag", "demo:arm", "registry.example/arm:v8")
    assert "registry.example/arm:v8" in ocikit(store, "images", "-q").stdout
    assert ocikit(store, "rmi", "demo:arm").stdout == "untagged: docker.io/library/demo:arm\n"
    gone = ocikit(store, "rmi", "demo:arm", ok=False)
    assert gone.returncode == 1
    assert "no image demo:arm in the store" in gone.stderr


def test_copy_out_of_the_store_to_a_layout_and_an_archive(
    tmp_path: Path, source: tuple[Path, BuiltImage]
) -> None:
    path, image = source
    store = tmp_path / "store"
    ocikit(store, "copy", "-q", f"oci:{path}:v1", "demo:1")
    ocikit(store, "push", "demo:1", f"oci-archive:{tmp_path / 'out.tar'}:pushed")
    ocikit(store, "copy", f"oci-archive:{tmp_path / 'out.tar'}:pushed", f"oci:{tmp_path / 'back'}:b")
    assert layout_files(tmp_path / "back") == image.blobs
    assert tagged(tmp_path / "back", "b")["digest"] == image.top.digest


def test_json_progress_lines(tmp_path: Path, source: tuple[Path, BuiltImage]) -> None:
    path, image = source
    out = ocikit(tmp_path / "store", "copy", "--format", "json", f"oci:{path}:v1", f"oci:{tmp_path / 'o'}:x")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert {e["event"] for e in events} == {"blob-start", "blob-done", "manifest", "copied"}
    assert events[-1]["digest"] == image.top.digest
    assert (events[-1]["blobsCopied"], events[-1]["manifests"]) == (7, 3)


def test_errors_are_one_line(tmp_path: Path, source: tuple[Path, BuiltImage]) -> None:
    path, _ = source
    store = tmp_path / "store"
    cases = [
        (("copy", f"oci:{tmp_path / 'none'}:x", "a"), "no image layout here"),
        (("copy", f"oci:{path}:nope", "a"), "has no image named 'nope'"),
        (("copy", "--platform", "linux", f"oci:{path}:v1", "a"), "is not os/arch"),
        (("copy", f"docker://127.0.0.1:{free_port()}/x", "a"), "connection refused"),
        (("pull", "--creds", "nocolon", "busybox"), "--creds takes USER:PASSWORD"),
        (("inspect", "missing:1"), "no image named 'docker.io/library/missing:1'"),
        (("copy", f"oci:{path}:v1", f"oci:{path.parent}"), "not empty and not an image layout"),
    ]
    for args, message in cases:
        result = ocikit(store, *args, ok=False)
        assert result.returncode == 1, args
        assert result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr


def test_inspect_of_a_missing_image_shows_the_registry_error(tmp_path: Path, registry: ServerProcess) -> None:
    """A HEAD answer has no body: the client asks again with GET to show the error code and message."""
    result = ocikit(tmp_path / "store", "inspect", f"docker://{registry.host}/nobody/here:1", ok=False)
    assert result.returncode == 1
    assert "NAME_UNKNOWN: repository nobody/here is not known" in result.stderr, result.stderr


def test_fsck_and_gc_commands(tmp_path: Path, source: tuple[Path, BuiltImage]) -> None:
    path, image = source
    store = tmp_path / "store"
    ocikit(store, "copy", f"oci:{path}:v1", "demo:1")
    assert ocikit(store, "fsck").stdout.endswith("checked 10 blobs: 0 corrupt, 0 missing, 0 removed\n")
    layer = json.loads(image.blobs[image.manifests["linux/amd64"]])["layers"][2]["digest"]
    blob = store / "blobs" / "sha256" / layer.split(":")[1]
    blob.write_bytes(blob.read_bytes()[::-1])
    report = ocikit(store, "fsck", "--format", "json", ok=False)
    assert report.returncode == 1
    assert [c["digest"] for c in json.loads(report.stdout)["corrupt"]] == [layer]
    assert "(removed)" in ocikit(store, "fsck", "--delete", ok=False).stdout
    assert not blob.exists()
    ocikit(store, "copy", f"oci:{path}:v1", "demo:1")  # restores the removed blob
    assert ocikit(store, "fsck").returncode == 0

    ocikit(store, "rmi", "demo:1")
    kept = ocikit(store, "gc").stdout  # default grace: everything is too recent to go
    assert "removed: 0 blobs" in kept
    assert "10 recent blobs" in kept
    assert "would remove: 10 blobs" in ocikit(store, "gc", "--grace", "0", "--dry-run").stdout
    assert "removed: 10 blobs" in ocikit(store, "gc", "--store", store, "--grace", "0").stdout
    assert layout_files(store) == {}


def test_progress_bars_on_a_terminal(tmp_path: Path, source: tuple[Path, BuiltImage]) -> None:
    """On a terminal (a real pseudo-terminal from script(1)) copy draws bars and still succeeds."""
    script = require_tool("script", "gives the copy a pseudo-terminal")
    path, image = source
    command = " ".join([*OCIKIT, "copy", f"oci:{path}:v1", f"oci:{tmp_path / 'tty'}:x"])
    result = subprocess.run(
        [script, "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout
    assert image.top.digest in result.stdout
    assert "━" in result.stdout  # rich's bar
    assert layout_files(tmp_path / "tty") == image.blobs
