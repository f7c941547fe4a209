"""``ocikit export``: a Proxmox VE container template (the flattened rootfs as ``.tar.zst``)
and an OCI archive as PVE 9.1 imports it. The files are checked member by member, extracted
the way ``pct create`` does (GNU tar, numeric owners, xattrs) and compared with umoci's
unpacking of the same image; the archive is read back by skopeo."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from busybox_image import ocikit, root_backend, write_busybox_layout
from conftest import require_tool
from layer_helpers import snapshot, write_blob
from snapshot_helpers import (
    BACKENDS,
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
)
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures of the zfs backend)

CONFIG = {"Entrypoint": ["/bin/show"], "Cmd": ["x"], "Env": ["PATH=/bin"], "StopSignal": "SIGINT"}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return root_backend(request, tmp_path)


def holds_xattrs(backend: str, request: pytest.FixtureRequest) -> bool:
    """zfs-fuse stores no extended attributes: there the layer's xattr is dropped when it is
    applied (with a warning), and the template rightly has none."""
    if backend != "zfs":
        return True
    probe = Path(request.getfixturevalue("zfs_pool").mountpoint) / f"xattr-probe-{os.getpid()}"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def export_template(tmp_path: Path, backend: str) -> Path:
    location = write_busybox_layout(tmp_path / "layout", CONFIG)
    target = tmp_path / "busybox.tar.zst"
    ocikit(
        "export", "--format", "pve-template", "--snapshotter", backend,
        "--snapshots", tmp_path / "snapshots", "--store", tmp_path / "store", location, target,
    )  # fmt: skip
    return target


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        found = {}
        for info in tar.getmembers():
            assert info.name not in found, f"{info.name} twice"
            found[info.name] = info
        return found


def test_template_members(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target = export_template(tmp_path, backend)
    data = target.read_bytes()
    params = zstandard.get_frame_parameters(data)
    assert params.has_checksum
    zstd = require_tool("zstd", "it checks the frames")
    subprocess.run([zstd, "-tq", str(target)], check=True)

    found = members(target)
    names = list(found)
    assert names[0] == "."  # "./" as written; tarfile drops the slash of a directory
    assert all(name.startswith("./") for name in names[1:])
    # Parents before children.
    for name in names[1:]:
        parent = name.rsplit("/", 1)[0]
        assert parent == "." or names.index(parent) < names.index(name), name
    assert all(info.uname == "" and info.gname == "" for info in found.values())  # numeric only

    # Whiteouts resolved: neither the deleted file nor the opaque directory's old content, and
    # no whiteout marker of any kind.
    assert "./etc/obsolete" not in found
    assert "./old/gone" not in found
    assert not any(".wh." in name for name in names)
    assert not any(info.ischr() and info.devmajor == 0 for info in found.values())

    assert (found["./data"].uid, found["./data"].gid, found["./data"].mode) == (1000, 1000, 0o755)
    assert (found["./home/alice"].uid, found["./home/alice"].mode) == (1000, 0o750)
    assert found["./tmp"].mode == 0o1777
    assert found["./bin/busybox"].mode == 0o755
    assert found["./bin/sh"].issym()
    assert found["./bin/sh"].linkname == "busybox"
    assert found["./dev/null"].ischr()
    assert (found["./dev/null"].devmajor, found["./dev/null"].devminor) == (
        1,
        3,
    )
    assert found["./old/kept-link"].islnk()
    assert found["./old/kept-link"].linkname == "./old/kept"
    if holds_xattrs(backend, request):
        assert found["./old/kept"].pax_headers.get("SCHILY.xattr.user.origin") == "layer2"
    for mount_point in ("./dev", "./proc", "./sys"):
        assert found[mount_point].isdir()
    assert not any("trusted.overlay" in key for info in found.values() for key in info.pax_headers)


def test_template_extracts_like_umoci_unpacks(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """GNU tar as pct create runs it gives the tree umoci makes of the same image."""
    tar = require_tool("tar")
    umoci = require_tool("umoci", "it unpacks the image independently")
    target = export_template(tmp_path, backend)
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    subprocess.run(
        [tar, "--zstd", "-xpf", str(target), "--numeric-owner", "--xattrs", "--xattrs-include=user.*",
         "--xattrs-include=security.capability", "-C", str(extracted)],
        check=True,
    )  # fmt: skip
    bundle = tmp_path / "umoci"
    subprocess.run(
        [umoci, "unpack", "--image", f"{tmp_path / 'layout'}:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    ours = snapshot(extracted, with_times=False)
    theirs = snapshot(bundle / "rootfs", with_times=False)
    if not holds_xattrs(backend, request):
        for name in ("old/kept", "old/kept-link"):  # one inode, two names
            theirs[name] = (*theirs[name][:5], (), *theirs[name][6:])
    # The template adds the mount points LXC needs when the image lacks them (this one has
    # /dev; /proc and /sys are in the image too), and nothing else.
    assert ours == theirs


def test_oci_archive_for_pve(tmp_path: Path) -> None:
    location = write_busybox_layout(tmp_path / "layout", CONFIG)
    target = tmp_path / "busybox.tar"
    ocikit("export", "--format", "oci-archive", "--store", tmp_path / "store", location, target)
    with tarfile.open(target) as tar:
        names = tar.getnames()
        # PVE looks members up by these exact names: no ./ prefix.
        assert "index.json" in names
        assert "oci-layout" in names
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        assert len(index["manifests"]) == 1
        entry = index["manifests"][0]
        assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        blob = tar.extractfile(f"blobs/sha256/{entry['digest'].split(':')[1]}")
        assert blob is not None
        manifest = json.load(blob)
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    # Byte for byte the image of the layout.
    source = json.loads((tmp_path / "layout" / "index.json").read_text())["manifests"][0]["digest"]
    assert entry["digest"] == source

    skopeo = require_tool("skopeo", "it reads the archive back")
    inspected = json.loads(
        subprocess.run(
            [skopeo, "inspect", f"oci-archive:{target}"], check=True, capture_output=True, text=True
        ).stdout
    )
    assert inspected["Digest"] == source
    assert len(inspected["Layers"]) == 2
    config = json.loads(
        subprocess.run(
            [skopeo, "inspect", "--config", f"oci-archive:{target}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert config["config"]["Entrypoint"] == ["/bin/show"]
    assert config["config"]["StopSignal"] == "SIGINT"


def docker_typed(layout: Path, layer_type: str = "application/vnd.docker.image.rootfs.diff.tar.gzip") -> str:
    """Relabel the layout's image with Docker's media types (the blobs stay as they are);
    the new manifest's digest."""
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"].split(":")[1]).read_text())
    manifest["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    manifest["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in manifest["layers"]:
        layer["mediaType"] = layer_type
    raw = json.dumps(manifest).encode()
    entry.update(mediaType=manifest["mediaType"], digest=write_blob(layout, raw), size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    return str(entry["digest"])


def test_docker_media_types_are_written_as_oci(tmp_path: Path) -> None:
    """PVE's importer knows OCI media types only: a Docker image's manifest is rewritten with
    their OCI twins, the config and layers staying byte for byte."""
    layout = tmp_path / "layout"
    write_busybox_layout(layout, CONFIG)
    oci_manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    oci = json.loads((layout / "blobs" / "sha256" / oci_manifest.split(":")[1]).read_text())
    docker = docker_typed(layout)
    target = tmp_path / "docker.tar"
    result = ocikit(
        "export", "--format", "oci-archive", "--store", tmp_path / "store", f"oci:{layout}:latest", target
    )
    assert f"(the image's is {docker})" in result.stderr
    with tarfile.open(target) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{entry['digest'].split(':')[1]}"))  # type: ignore[arg-type]
    assert entry["mediaType"] == manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"] == oci["config"]
    assert manifest["layers"] == oci["layers"]
    skopeo = require_tool("skopeo", "it reads the archive back")
    inspected = subprocess.run(
        [skopeo, "inspect", f"oci-archive:{target}"], check=True, capture_output=True, text=True
    )
    assert json.loads(inspected.stdout)["Digest"] == entry["digest"]


def test_what_pve_cannot_import_is_refused(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_busybox_layout(layout, CONFIG)
    docker_typed(layout, "application/vnd.example.squashfs")
    target = tmp_path / "odd.tar"
    result = ocikit(
        "export", "--format", "oci-archive", "--store", tmp_path / "store", f"oci:{layout}:latest", target,
        ok=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Proxmox VE imports OCI media types only" in result.stderr
    assert "application/vnd.example.squashfs" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".odd.tar")] == []


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    result = ocikit(
        "export", "--format", "pve-template", "--snapshotter", "dir", "--snapshots", tmp_path / "s",
        "--store", tmp_path / "store", "oci:/nonexistent/layout", tmp_path / "x.tar.zst", ok=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("ocikit export: ")
    assert "Traceback" not in result.stderr
