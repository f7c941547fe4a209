"""Snapshotters: layered root filesystems keyed by ChainID, containerd-style.

Pick a backend by name with :func:`open_snapshotter`; each backend is one module, so adding
one (ZFS) means adding a module and a line to :data:`BACKENDS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

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
from .zfs import ZfsSnapshotter

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
    "ZfsSnapshotter",
    "is_mountpoint",
    "mount",
    "open_snapshotter",
    "unmount",
]

#: Backend name -> class taking the state directory (and the options it lists in ``options``).
BACKENDS: dict[str, Callable[..., Snapshotter]] = {
    DirSnapshotter.name: DirSnapshotter,
    OverlaySnapshotter.name: OverlaySnapshotter,
    ZfsSnapshotter.name: ZfsSnapshotter,
}


def open_snapshotter(name: str, root: str | os.PathLike[str], **options: str) -> Snapshotter:
    """The snapshotter ``name`` keeping its state in ``root`` (created if missing).

    ``options`` are backend settings (``zfs_dataset="POOL/PATH"`` for ``zfs``); one the
    backend does not take is refused rather than silently ignored.
    """
    try:
        backend = BACKENDS[name]
    except KeyError:
        raise SnapshotError(f"unknown snapshotter {name!r}; known: {', '.join(sorted(BACKENDS))}") from None
    unknown = sorted(set(options) - set(getattr(backend, "options", ())))
    if unknown:
        raise SnapshotError(f"the {name} snapshotter takes no option {', '.join(unknown)}")
    return backend(root, **options)
