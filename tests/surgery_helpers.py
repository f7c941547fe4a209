"""Images and tools for the image surgery tests: a runnable busybox image with two layers in a
local store, the ocikit CLI, umoci, skopeo and runc as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from bundle_helpers import build_rootfs
from conftest import OCIKIT, require_tool
from layer_helpers import Layer, write_layout

BASE = "localhost/surgery/busybox:1"


def ocikit(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*OCIKIT, *args], capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert result.returncode == 0, f"ocikit {' '.join(args)}: {result.stderr}"
    return result


def gnu_tar(root: Path) -> bytes:
    """The tree as GNU tar writes it (an independent writer for the base image)."""
    tar = require_tool("tar")
    return subprocess.run(
        [tar, "--numeric-owner", "--xattrs", "--sort=name", "-C", str(root), "-cf", "-", "."],
        capture_output=True,
        check=True,
    ).stdout


#: The second layer: what the commit test changes, replaces and deletes.
EXTRA = (
    Layer()
    .dir("etc", mode=0o755)
    .file("etc/motd", b"welcome\n")
    .file("etc/motd2", b"a file that becomes a directory\n")
    .dir("opt", mode=0o755)
    .dir("opt/app", mode=0o755)
    .file("opt/app/one", b"1")
    .file("opt/app/two", b"2")
    .dir("opt/app/sub", mode=0o755)
    .file("opt/app/sub/three", b"3")
    .dir("srv", mode=0o755)
    .dir("srv/www", mode=0o755)
    .file("srv/www/index.html", b"<html></html>")
    .hardlink("srv/www/index.htm", "srv/www/index.html")
)


def make_base_store(work: Path) -> Path:
    """A store holding ``BASE``: busybox + an extra layer, Cmd ``/bin/show`` (set by ``ocikit
    config`` from a layout, which also exercises that path)."""
    root = work / "rootfs"
    root.mkdir()
    build_rootfs(root)
    layout = work / "layout"
    write_layout(layout, [gnu_tar(root), EXTRA.tar()])
    store = work / "store"
    ocikit("config", f"oci:{layout}:latest", BASE, "--store", str(store), "--cmd", '["/bin/show"]')
    return store


def umoci_unpack(layout: Path, ref: str, bundle: Path) -> Path:
    umoci = require_tool("umoci", "the reference unpacker")
    subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{ref}", str(bundle)], check=True, capture_output=True
    )
    return bundle / "rootfs"


def skopeo_inspect(location: str, *, config: bool = False, tls: bool = True) -> dict[str, Any]:
    skopeo = require_tool("skopeo", "the reference reader of images")
    args = [skopeo, "inspect"]
    if not tls:
        args.append("--tls-verify=false")
    if config:
        args.append("--config")
    result = subprocess.run([*args, location], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def layer_names(layout: Path, ref: str, index: int = -1) -> list[str]:
    """The member names of one layer of an image in a layout, as Python's tarfile reads them."""
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    (entry,) = [
        e for e in entries if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]
    manifest = json.loads((layout / "blobs" / entry["digest"].replace(":", "/")).read_bytes())
    blob = layout / "blobs" / manifest["layers"][index]["digest"].replace(":", "/")
    with tarfile.open(blob) as tar:
        return tar.getnames()


def history(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(config.get("history", []))


def non_empty(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for entry in history(config) if not entry.get("empty_layer")]


def is_root() -> bool:
    return os.geteuid() == 0
