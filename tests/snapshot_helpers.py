"""Helpers shared by the snapshotter and bundle tests: opening a backend (skipping where it
cannot work), mounting for the duration of a block, and describing a tree so two can be
compared attribute by attribute."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ocikit.snapshot import Mount, Snapshotter, mount, open_snapshotter, unmount
from ocikit.snapshot.overlay import overlay_supported

#: Backends whose state is directories under the root (tests that look at them use this list).
FILE_BACKENDS = ["dir", "overlay"]
BACKENDS = [*FILE_BACKENDS, "zfs"]


def open_backend(name: str, root: Path, request: pytest.FixtureRequest | None = None) -> Snapshotter:
    """Open backend ``name``, skipping where it cannot work. For ``zfs``, ``request`` (the
    first open in a test) brings a fresh parent dataset of the session's pool: the test
    module must import the ``zfs_pool`` and ``zfs_dataset`` fixtures."""
    if os.geteuid() != 0 and name == "dir":
        return open_snapshotter(name, root)
    if name == "overlay" and (reason := overlay_supported()):
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("mounting snapshots needs root")
    if name == "zfs" and request is not None:
        request.getfixturevalue("zfs_dataset")
    return open_snapshotter(name, root)


def assert_no_data_left(snap: Snapshotter) -> None:
    """Removing every snapshot left no data behind: no directory, or no dataset."""
    if snap.name == "zfs":
        from zfs_pool import zfs_names

        dataset = snap.dataset  # type: ignore[attr-defined]
        assert zfs_names(dataset) == [dataset]
    else:
        assert os.listdir(snap.root / "snapshots") == []
        assert os.listdir(snap.root / "trash") == []


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], target: Path, **kwargs: Any) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    mount(mounts, target, **kwargs)
    try:
        yield target
    finally:
        unmount(target)


def tree_of(root: Path, *, owners: bool = True) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` with type, mode, owner, size, mtime, content digest, link
    target, device number and xattrs (the overlay-private ones left out)."""
    result: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            xattrs: list[tuple[str, bytes]] = []
            if not stat.S_ISLNK(st.st_mode):
                xattrs = sorted(
                    (key, os.getxattr(path, key, follow_symlinks=False))
                    for key in os.listxattr(path, follow_symlinks=False)
                    if not key.startswith("trusted.overlay.")
                )
            mtime = None if stat.S_ISDIR(st.st_mode) and not owners else st.st_mtime_ns
            result[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                (st.st_uid, st.st_gid) if owners else None,
                st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                mtime,
                content,
                st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else None,
                tuple(xattrs),
            )
    return result


def unmount_all_under(path: Path) -> None:
    """Undo whatever a failed test left mounted below ``path`` (deepest first), so that a
    failure does not leave mounts behind in pytest's temporary directories."""
    base = os.path.abspath(path)
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    for point in sorted(points, key=len, reverse=True):
        if point.startswith(base + "/"):
            with contextlib.suppress(Exception):
                unmount(point, detach=True)


@pytest.fixture(autouse=True)
def _no_mounts_left(tmp_path: Path) -> Iterator[None]:
    yield
    unmount_all_under(tmp_path)
