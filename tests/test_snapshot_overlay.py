"""The overlay snapshotter: layer directories in overlayfs format, and images with many layers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocikit.snapshot import Mount, SnapshotError, Snapshotter, mount
from ocikit.snapshot import mounting as mount_module
from ocikit.snapshot.mounting import _overlay_data, is_mountpoint
from snapshot_helpers import (
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
    mounted,
    open_backend,
)

LAYERS = 150


@pytest.fixture
def snap(tmp_path: Path) -> Iterator[Snapshotter]:
    snapshotter = open_backend("overlay", tmp_path / "state-with-a-long-enough-name-to-overflow-a-page")
    yield snapshotter
    snapshotter.close()


def test_a_committed_layer_holds_only_its_diff_with_whiteouts(snap: Snapshotter, tmp_path: Path) -> None:
    with mounted(snap.prepare("a"), tmp_path / "m") as root:
        (root / "old").write_text("o")
        (root / "dir").mkdir()
        (root / "dir" / "inner").write_text("i")
    snap.commit("l1", "a")
    with mounted(snap.prepare("b", "l1"), tmp_path / "m") as root:
        (root / "old").unlink()
        (root / "dir" / "inner").unlink()
        (root / "dir").rmdir()
        (root / "dir").mkdir()
        (root / "new").write_text("n")
    snap.commit("l2", "b")
    diff = snap.path_of("l2")  # type: ignore[attr-defined]
    whiteout = os.lstat(diff / "old")
    assert stat.S_ISCHR(whiteout.st_mode)
    assert whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(diff / "dir", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(diff)) == ["dir", "new", "old"]


def make_chain(snap: Snapshotter, tmp_path: Path, count: int) -> str:
    """``count`` layers: layer i adds file i and deletes file i-1, so only the last survives
    and every layer's whiteout must be honoured."""
    parent = None
    for i in range(count):
        key = f"layer-{i}"
        with mounted(snap.prepare(f"tmp-{i}", parent), tmp_path / "m") as root:
            (root / f"f{i}").write_text(str(i))
            if i:
                (root / f"f{i - 1}").unlink()
            if i % 10 == 0:
                (root / f"keep{i}").write_text("k")
        snap.commit(key, f"tmp-{i}")
        parent = key
    assert parent is not None
    return parent


@pytest.mark.parametrize("new_api", [True, False], ids=["lowerdir+", "relative-paths"])
def test_many_layers_mount_despite_the_option_size_limit(
    snap: Snapshotter, tmp_path: Path, new_api: bool
) -> None:
    top = make_chain(snap, tmp_path, LAYERS)
    mounts = snap.prepare("container", top)
    assert len(_overlay_data(mounts[0], None)) > os.sysconf("SC_PAGE_SIZE")  # would not fit as is
    with mounted(mounts, tmp_path / "rootfs", new_api=new_api) as root:
        expected = {f"f{LAYERS - 1}", *(f"keep{i}" for i in range(0, LAYERS, 10))}
        assert set(os.listdir(root)) == expected
        assert (root / f"f{LAYERS - 1}").read_text() == str(LAYERS - 1)
        (root / "written").write_text("w")
    if new_api:
        assert mount_module._new_api_works is True  # the fsconfig path really ran
    assert (snap.path_of("container") / "written").read_text() == "w"  # type: ignore[attr-defined]
    assert not is_mountpoint(tmp_path / "rootfs")


def test_a_view_of_many_layers_is_read_only(snap: Snapshotter, tmp_path: Path) -> None:
    top = make_chain(snap, tmp_path, 12)
    with mounted(snap.view("v", top), tmp_path / "v") as root:
        assert "f11" in os.listdir(root)
        with pytest.raises(OSError, match="Read-only"):
            (root / "x").write_text("x")


def test_a_failed_mount_leaves_nothing_mounted(snap: Snapshotter, tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    bad = Mount(
        "overlay", "overlay", (f"lowerdir={tmp_path}/missing", f"upperdir={tmp_path}/u", "workdir=/nope")
    )
    with pytest.raises(SnapshotError, match="cannot mount"):
        mount([bad], target)
    assert not is_mountpoint(target)
