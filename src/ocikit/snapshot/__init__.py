"""Snapshotters: layered root filesystems keyed by ChainID, containerd-style.

Pick a backend by name with :func:`open_snapshotter`; each backend is one module, so adding
one (ZFS) means adding a module and a line to :data:`BACKENDS`.
"""

from __future__ import annotations

import os

from ._common import SnapshotterBase
from .base import (
    AlreadyExistsError,
    HasChildrenError,
    Info,
    InvalidStateError,
    Kind,
    Mount,
    NotFoundError,
    SnapshotError,
    Snapshotter,
    Usage,
)
from .dir import DirSnapshotter
from .mounting import is_mountpoint, mount, unmount
from .overlay import OverlaySnapshotter

__all__ = [
    "BACKENDS",
    "AlreadyExistsError",
    "DirSnapshotter",
    "HasChildrenError",
    "Info",
    "InvalidStateError",
    "Kind",
    "Mount",
    "NotFoundError",
    "OverlaySnapshotter",
    "SnapshotError",
    "Snapshotter",
    "Usage",
    "is_mountpoint",
    "mount",
    "open_snapshotter",
    "unmount",
]

#: Backend name -> class taking the state directory.
BACKENDS: dict[str, type[SnapshotterBase]] = {
    DirSnapshotter.name: DirSnapshotter,
    OverlaySnapshotter.name: OverlaySnapshotter,
}


def open_snapshotter(name: str, root: str | os.PathLike[str]) -> Snapshotter:
    """The snapshotter ``name`` keeping its state in ``root`` (created if missing)."""
    try:
        backend = BACKENDS[name]
    except KeyError:
        raise SnapshotError(f"unknown snapshotter {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    return backend(root)
