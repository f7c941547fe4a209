"""ocikit's result against ``umoci unpack`` of the same image, compared field by field.

Two kinds of images: layers crafted here (every entry type, attribute and whiteout form),
and layers written by umoci itself from real directories of this machine (an independent tar
writer), with a layer of deletions made by ``umoci repack``. The comparison covers the file
tree, types, modes, owners, contents, link targets, device numbers, xattrs and mtimes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import require_tool
from layer_helpers import Layer, snapshot, write_layout
from ocikit.layers import apply_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack without --rootless needs root")

CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")


def ocikit_unpack(layout: Path, destination: Path, tag: str = "latest") -> None:
    """Apply every layer of the tagged image in order, as a snapshotter would."""

    def blob(digest: str) -> Path:
        return layout / "blobs" / digest.replace(":", "/")

    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = [
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    ]
    manifest = json.loads(blob(descriptor["digest"]).read_bytes())
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    destination.mkdir()
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        apply_layer(destination, blob(layer["digest"]), layer["mediaType"], layer["digest"], diff_id)


def umoci_unpack(layout: Path, bundle: Path, tag: str = "latest") -> Path:
    umoci = require_tool("umoci", "the reference unpacker")
    subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True
    )
    return bundle / "rootfs"


def assert_same_tree(ours: Path, theirs: Path, implicit: frozenset[str] = frozenset()) -> None:
    """Equal in everything; ``implicit`` directories were made by the unpackers (no layer names
    them), so their times are the moment each tool made them and are not compared."""
    mine, reference = snapshot(ours), snapshot(theirs)
    for path in implicit:
        mine[path], reference[path] = mine[path][:-1], reference[path][:-1]
    assert sorted(mine) == sorted(reference), "the file trees differ"
    differing = {path: (mine[path], reference[path]) for path in mine if mine[path] != reference[path]}
    assert not differing, f"ocikit vs umoci: {differing}"


CRAFTED = [
    Layer()
    .dir("etc", mode=0o755, mtime=1_000_000_000)
    .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
    .file("etc/shadow", b"root:*:1::::::\n", mode=0o640, gid=42)
    .dir("usr", mode=0o755)
    .dir("usr/bin", mode=0o755)
    .file("usr/bin/su", b"\x7fELF su", mode=0o4755)
    .file("usr/bin/wall", b"\x7fELF wall", mode=0o2755, gid=5)
    .file("usr/bin/ping", b"\x7fELF ping", mode=0o755, xattrs={"security.capability": CAPABILITY})
    .hardlink("usr/bin/su-again", "usr/bin/su")
    .symlink("usr/bin/sh", "dash")
    .symlink("bin", "usr/bin")
    .symlink("usr/bin/abs", "/etc/passwd")
    .dir("tmp", mode=0o1777)
    .dir("home", mode=0o755)
    .dir("home/user", mode=0o700, uid=1000, gid=1000, xattrs={"user.note": b"home"})
    .file("home/user/.profile", b"export A=1\n", uid=1000, gid=1000, mode=0o600)
    .dir("dev", mode=0o755)
    .chardev("dev/null", 1, 3, mode=0o666)
    .blockdev("dev/loop0", 7, 0, mode=0o660, gid=6)
    .fifo("dev/initctl", mode=0o600)
    .dir("long", mode=0o755)
    .dir("long/" + "d" * 90, mode=0o755)
    .file("long/" + "d" * 90 + "/" + "f" * 120, b"long name", mode=0o644)
    .dir("opt", mode=0o755)
    .dir("opt/app", mode=0o755)
    .file("opt/app/one", b"1")
    .file("opt/app/two", b"2")
    .dir("opt/app/sub", mode=0o755)
    .file("opt/app/sub/three", b"3")
    .dir("var", mode=0o755)
    .dir("var/cache", mode=0o755)
    .file("var/cache/big", b"c" * 300_000),
    Layer()
    .file("etc/passwd", b"root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n")
    .dir("etc", mode=0o750, mtime=1_100_000_000)
    .whiteout("var/cache", "big")
    .whiteout("usr/bin", "wall")
    .dir("tmp", mode=0o1777)
    .file("tmp/was-dir-now", b"x")
    .hardlink("etc/passwd-link", "etc/shadow")
    .dir("srv", mode=0o755)
    .file("srv/data", b"data", mode=0o444, uid=33, gid=33),
    Layer()
    .dir("opt/app", mode=0o711)
    .opaque("opt/app")
    .file("opt/app/new", b"replaced")
    .whiteout("", "long")
    .dir("tmp/was-dir-now", mode=0o755)
    .file("tmp/was-dir-now/inside", b"now a dir")
    .symlink("srv/data", "../etc/passwd"),
]


def test_crafted_layers_match_umoci(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_layout(layout, [layer.tar() for layer in CRAFTED])
    ours = tmp_path / "ours"
    ocikit_unpack(layout, ours)
    theirs = umoci_unpack(layout, tmp_path / "bundle")
    assert_same_tree(ours, theirs)
    assert (ours / "opt/app").is_dir()
    assert sorted(os.listdir(ours / "opt/app")) == ["new"]


def test_layers_written_by_umoci_from_real_directories(tmp_path: Path) -> None:
    """umoci writes the layers (its own tar writer), from directories of this machine."""
    umoci = require_tool("umoci", "it writes the layers of this image")
    source = tmp_path / "source"
    shutil.copytree("/etc", source / "etc", symlinks=True, ignore_dangling_symlinks=True)
    zoneinfo = Path("/usr/share/zoneinfo")
    if zoneinfo.is_dir():
        shutil.copytree(zoneinfo, source / "usr/share/zoneinfo", symlinks=True)
    layout = tmp_path / "layout"
    image = f"{layout}:latest"

    def umoci_run(*args: str) -> None:
        subprocess.run([umoci, *args], check=True, capture_output=True)

    umoci_run("init", "--layout", str(layout))
    umoci_run("new", "--image", image)
    umoci_run("insert", "--image", image, str(source), "/")
    umoci_run("insert", "--image", image, str(source / "etc"), "/opt/etc-copy")
    bundle = tmp_path / "work-bundle"
    umoci_run("unpack", "--image", image, str(bundle))
    shutil.rmtree(bundle / "rootfs/opt/etc-copy/default", ignore_errors=True)
    for path in sorted((bundle / "rootfs/etc").iterdir())[:10]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    (bundle / "rootfs/etc/motd").write_text("changed\n")
    umoci_run("repack", "--image", image, str(bundle))
    ours = tmp_path / "ours"
    ocikit_unpack(layout, ours)
    theirs = umoci_unpack(layout, tmp_path / "bundle")
    assert_same_tree(ours, theirs, implicit=frozenset({"opt"}))
