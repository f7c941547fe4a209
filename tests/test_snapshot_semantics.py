"""The Snapshotter contract, checked on every backend with real mounts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocikit.snapshot import (
    AlreadyExistsError,
    HasChildrenError,
    InvalidStateError,
    Kind,
    NotFoundError,
    SnapshotError,
    Snapshotter,
    Usage,
    mount,
    unmount,
)
from snapshot_helpers import (
    BACKENDS,
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
    assert_no_data_left,
    mounted,
    open_backend,
)
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures of the zfs backend)


@pytest.fixture(params=BACKENDS)
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    snapshotter = open_backend(request.param, tmp_path / "state", request)
    yield snapshotter
    snapshotter.close()


def layer(
    snap: Snapshotter, tmp_path: Path, name: str, parent: str | None, files: dict[str, str | None]
) -> None:
    """Commit ``name`` over ``parent`` with ``files`` written (None: deleted)."""
    key = f"extract-{name}"
    with mounted(snap.prepare(key, parent), tmp_path / "mnt") as root:
        for path, content in files.items():
            target = root / path
            if content is None:
                if target.is_dir() and not target.is_symlink():
                    subprocess.run(["rm", "-rf", str(target)], check=True)
                else:
                    target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
    snap.commit(name, key)


def contents(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def test_prepare_commit_and_stat(snap: Snapshotter, tmp_path: Path) -> None:
    layer(snap, tmp_path, "base", None, {"etc/hostname": "one", "bin/tool": "#!"})
    info = snap.stat("base")
    assert (info.key, info.kind, info.parent) == ("base", Kind.COMMITTED, None)
    assert info.created <= info.updated
    with pytest.raises(NotFoundError):
        snap.stat("extract-base")  # committing consumes the active key
    snap.prepare("work", "base", labels={"purpose": "test"})
    info = snap.stat("work")
    assert (info.kind, info.parent, dict(info.labels)) == (Kind.ACTIVE, "base", {"purpose": "test"})


def test_a_chain_merges_and_children_never_change_parents(snap: Snapshotter, tmp_path: Path) -> None:
    layer(snap, tmp_path, "l1", None, {"a": "1", "dir/b": "1", "dir/c": "1"})
    layer(snap, tmp_path, "l2", "l1", {"a": "2", "dir/d": "2"})
    layer(snap, tmp_path, "l3", "l2", {"dir/b": None, "e": "3"})
    with mounted(snap.view("v3", "l3"), tmp_path / "v3") as root:
        assert contents(root) == {"a": "2", "dir/c": "1", "dir/d": "2", "e": "3"}
        with pytest.raises(OSError, match="Read-only"):
            (root / "new").write_text("x")
    with mounted(snap.prepare("c", "l3"), tmp_path / "c") as root:
        (root / "a").write_text("changed")
        (root / "dir" / "c").unlink()
    with mounted(snap.view("v1", "l1"), tmp_path / "v1") as root:
        assert contents(root) == {"a": "1", "dir/b": "1", "dir/c": "1"}
    with mounted(snap.view("v3b", "l3"), tmp_path / "v3b") as root:
        assert contents(root) == {"a": "2", "dir/c": "1", "dir/d": "2", "e": "3"}
    assert [(i.key, i.parent) for i in snap.walk()] == [
        ("l1", None),
        ("l2", "l1"),
        ("l3", "l2"),
        ("v3", "l3"),
        ("c", "l3"),
        ("v1", "l1"),
        ("v3b", "l3"),
    ]


def test_deleting_a_lower_file_or_dir_hides_it_from_children(snap: Snapshotter, tmp_path: Path) -> None:
    layer(snap, tmp_path, "l1", None, {"keep": "k", "gone": "g", "tree/x": "x", "tree/sub/y": "y"})
    layer(snap, tmp_path, "l2", "l1", {"gone": None, "tree": None})
    with mounted(snap.prepare("child", "l2"), tmp_path / "child") as root:
        assert contents(root) == {"keep": "k"}
        assert not (root / "tree").exists()
    # A directory deleted and created again shows only its new content (opaque directory).
    layer(snap, tmp_path, "l3", "l1", {"tree": None})
    with mounted(snap.prepare("redo", "l3"), tmp_path / "redo") as root:
        (root / "tree").mkdir()
        (root / "tree" / "fresh").write_text("f")
    snap.commit("l4", "redo")
    with mounted(snap.view("v4", "l4"), tmp_path / "v4") as root:
        assert contents(root) == {"keep": "k", "gone": "g", "tree/fresh": "f"}


def test_commit_and_create_errors(snap: Snapshotter, tmp_path: Path) -> None:
    layer(snap, tmp_path, "base", None, {"f": "1"})
    snap.prepare("active")
    snap.view("view", "base")
    with pytest.raises(AlreadyExistsError):
        snap.prepare("active")
    with pytest.raises(AlreadyExistsError):
        snap.view("base", "base")
    with pytest.raises(NotFoundError):
        snap.prepare("x", "no-such-parent")
    with pytest.raises(InvalidStateError, match="only committed"):
        snap.prepare("x", "active")
    with pytest.raises(InvalidStateError, match="only active"):
        snap.commit("y", "view")
    with pytest.raises(InvalidStateError, match="only active"):
        snap.commit("y", "base")
    with pytest.raises(AlreadyExistsError):
        snap.commit("base", "active")
    with pytest.raises(InvalidStateError):
        snap.mounts("base")
    with pytest.raises(NotFoundError):
        snap.remove("nothing")
    for bad in ["", "a\0b", "k" * 5000]:
        with pytest.raises(SnapshotError):
            snap.prepare(bad)
    with pytest.raises(SnapshotError, match="labels"):
        snap.prepare("z", labels={"a": 1})  # type: ignore[dict-item]
    # Nothing of the refused operations was recorded.
    assert sorted(i.key for i in snap.walk()) == ["active", "base", "view"]
    assert snap.stat("active").kind is Kind.ACTIVE


def test_commit_keeps_and_merges_labels(snap: Snapshotter) -> None:
    snap.prepare("k", labels={"a": "1", "b": "1"})
    info = snap.commit("n", "k", labels={"b": "2"})
    assert dict(info.labels) == {"a": "1", "b": "2"}


def test_remove_refuses_parents_and_mounted_snapshots(snap: Snapshotter, tmp_path: Path) -> None:
    layer(snap, tmp_path, "base", None, {"f": "1"})
    snap.prepare("child", "base")
    with pytest.raises(HasChildrenError, match="child"):
        snap.remove("base")
    target = tmp_path / "rootfs"
    target.mkdir()
    mount(snap.mounts("child"), target)
    try:
        with pytest.raises(SnapshotError, match="in use"):
            snap.remove("child")
    finally:
        unmount(target)
    snap.remove("child")
    snap.remove("base")
    assert list(snap.walk()) == []
    assert_no_data_left(snap)


def test_remove_never_deletes_through_a_mount_inside(snap: Snapshotter, tmp_path: Path) -> None:
    """A filesystem mounted inside a snapshot (a volume, /proc of a container) is left alone."""
    snap.prepare("k")
    data = snap.path_of("k")  # type: ignore[attr-defined]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("keep")
    (data / "vol").mkdir()
    mount([_bind(precious)], data / "vol")
    try:
        with pytest.raises(SnapshotError, match="in use"):
            snap.remove("k")
    finally:
        unmount(data / "vol")
    assert (precious / "keep").read_text() == "keep"
    snap.remove("k")


def _bind(path: Path) -> object:
    from ocikit.snapshot import Mount

    return Mount("bind", str(path), ("rbind", "rw"))


def test_usage_counts_the_snapshot_own_data(snap: Snapshotter, tmp_path: Path) -> None:
    layer(snap, tmp_path, "big", None, {"blob": "x" * (1 << 20)})
    base = snap.usage("big")
    assert isinstance(base, Usage)
    assert base.size >= 1 << 20
    assert base.inodes == 2
    layer(snap, tmp_path, "small", "big", {"note": "n"})
    usage = snap.usage("small")
    if snap.name == "overlay":
        assert usage.size < 1 << 20
        assert usage.inodes == 2
    elif snap.name == "zfs":
        assert usage.size < 1 << 20  # a clone shares its parent's blocks
        assert usage.inodes == 3  # ZFS counts no inodes per clone: the tree's are counted
    else:
        assert usage.size >= 1 << 20
        assert usage.inodes == 3


def test_mounts_are_reproducible_after_reopen(snap: Snapshotter, tmp_path: Path) -> None:
    layer(snap, tmp_path, "l1", None, {"f": "1"})
    first = snap.prepare("k", "l1")
    reopened = open_backend(snap.name, snap.root)
    try:
        assert reopened.mounts("k") == first
        assert [i.key for i in reopened.walk()] == ["l1", "k"]
    finally:
        reopened.close()
