"""The snapshotter interface: containerd's model of layered root filesystems, kept narrow so
that a backend (``dir``, ``overlay``, later ``zfs``) is one module implementing one Protocol.

A snapshot is one of three kinds. *Committed* snapshots are immutable and may be parents;
in practice they are named by the ChainID of the layers they hold, so a layer shared by
images is applied and stored once. *Active* snapshots are writable and are what a layer is
applied into (then committed) or what a container runs on. *Views* are read-only. A
snapshotter never mounts anything itself: it answers with :class:`Mount` descriptions, and
the caller mounts them (:func:`ocikit.snapshot.mounting.mount`) wherever it needs them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "AlreadyExistsError",
    "HasChildrenError",
    "Info",
    "InvalidStateError",
    "Kind",
    "Mount",
    "NotFoundError",
    "SnapshotError",
    "Snapshotter",
    "Usage",
]


class SnapshotError(Exception):
    """A snapshot operation was refused or failed; the message says which snapshot and why."""


class NotFoundError(SnapshotError):
    """No snapshot has that key."""


class AlreadyExistsError(SnapshotError):
    """A snapshot with that key (or committed name) exists already."""


class HasChildrenError(SnapshotError):
    """Removing a snapshot that other snapshots are built on would pull the floor from under them."""


class InvalidStateError(SnapshotError):
    """The snapshot is of the wrong kind for the operation (committing a view, a parent that is active...)."""


class Kind(enum.StrEnum):
    ACTIVE = "active"
    COMMITTED = "committed"
    VIEW = "view"


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount(2) call: ``mount -t TYPE SOURCE TARGET -o OPTIONS``.

    Paths inside ``options`` are absolute. The list of options is kept unjoined so that the
    mount helper can pass overlay lower directories one by one when the kernel allows it,
    instead of squeezing them into a single page-limited option string.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Info:
    key: str
    kind: Kind
    parent: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    updated: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Disk used by the snapshot itself (for layered backends: its own diff, not its parents)."""

    size: int
    inodes: int


@runtime_checkable
class Snapshotter(Protocol):
    """What every backend implements. Keys are opaque strings (never used as paths)."""

    #: The backend's name as the CLI spells it (``dir``, ``overlay``...).
    name: str
    #: The directory that holds the backend's state.
    root: Path

    def prepare(
        self, key: str, parent: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new writable *active* snapshot over the committed ``parent`` (or empty)."""
        ...

    def view(
        self, key: str, parent: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new read-only *view* of the committed ``parent``."""
        ...

    def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> Info:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``; ``key`` is gone."""
        ...

    def remove(self, key: str) -> None:
        """Delete a snapshot of any kind; refused while other snapshots have it as parent."""
        ...

    def stat(self, key: str) -> Info: ...

    def walk(self) -> Iterator[Info]:
        """Every snapshot, parents before their children."""
        ...

    def usage(self, key: str) -> Usage: ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active snapshot or view (again, e.g. after a reboot)."""
        ...

    def path_of(self, key: str) -> Path:
        """The directory holding the snapshot's own data: a complete tree (``dir``, ``zfs``) or
        the layer's diff (``overlay``'s upper directory). For tools that read snapshots."""
        ...

    def cleanup(self) -> None:
        """Remove what crashed operations left behind (half-prepared or half-removed data)."""
        ...

    def close(self) -> None: ...
