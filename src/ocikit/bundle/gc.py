"""Garbage collection of snapshots: committed layers that nothing uses any more.

A committed snapshot is *in use* when a stored image's ChainIDs name it (``keep``), or when
it is under a snapshot that is not committed: a bundle's or LXC container's rootfs, a view,
a layer being unpacked. Everything else is removed once it is older than the grace period
(a layer committed a moment ago may belong to an image whose name is just being written),
children before parents, so a whole unused stack goes in one run.

A bundle's active snapshot is *released* only when its directory is gone: ``ocikit rm`` was
skipped and the directory deleted by hand. It is still removed only when nothing is mounted
from it (the snapshotter refuses otherwise), so a container that runs on it is never touched.
A directory that exists keeps its snapshot whatever it holds, since guessing wrong would
destroy a container's data.

Every removal goes through :meth:`Snapshotter.remove`, which refuses a snapshot that has
children or is mounted: a snapshot that gains a child between the decision and the removal
is reported as in use and kept.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..snapshot import Info, Kind, NotFoundError, SnapshotError, Snapshotter
from .create import BUNDLE_LABEL

__all__ = ["SnapshotGCReport", "collect_snapshots"]


@dataclass
class SnapshotGCReport:
    backend: str
    #: Committed snapshots removed (or, with ``dry_run``, that would be).
    removed: list[str] = field(default_factory=list)
    #: Active snapshots of bundles whose directory is gone: (key, directory).
    released: list[tuple[str, str]] = field(default_factory=list)
    #: Snapshots kept because the snapshotter refused to remove them: (key, why).
    refused: list[tuple[str, str]] = field(default_factory=list)
    kept: int = 0
    kept_recent: int = 0


def _released(info: Info) -> str | None:
    """The directory of a bundle snapshot whose directory no longer exists, else None."""
    directory = info.labels.get(BUNDLE_LABEL)
    if info.kind is not Kind.ACTIVE or not directory or not os.path.isabs(directory):
        return None
    return None if os.path.lexists(directory) else directory


def _recent(info: Info, cutoff: datetime) -> bool:
    try:
        updated = datetime.fromisoformat(info.updated.replace("Z", "+00:00"))
    except ValueError:
        return True  # unreadable time: keep, never guess
    return updated >= cutoff


def _remove(snapshotter: Snapshotter, key: str, report: SnapshotGCReport) -> bool:
    try:
        snapshotter.remove(key)
    except NotFoundError:
        return True  # someone else removed it: gone either way
    except SnapshotError as exc:
        report.refused.append((key, str(exc)))
        return False
    return True


def collect_snapshots(
    snapshotter: Snapshotter,
    keep: Collection[str],
    *,
    grace: float = 0.0,
    dry_run: bool = False,
) -> SnapshotGCReport:
    """Remove the committed snapshots of ``snapshotter`` that are not in use (see above);
    ``keep`` is every ChainID of the stored images (:func:`ocikit.store.chains.stored_chain_ids`)."""
    report = SnapshotGCReport(snapshotter.name)
    infos = list(snapshotter.walk())  # parents before children
    gone: set[str] = set()
    for info in infos:
        directory = _released(info)
        if directory is not None and (dry_run or _remove(snapshotter, info.key, report)):
            report.released.append((info.key, directory))
            gone.add(info.key)

    by_key = {info.key: info for info in infos}
    live: set[str] = set()

    def mark(key: str | None) -> None:
        while key is not None and key not in live and key in by_key:
            live.add(key)
            key = by_key[key].parent

    for info in infos:
        if info.key in gone:
            continue
        if info.kind is not Kind.COMMITTED or info.key in keep:
            mark(info.key)

    cutoff = datetime.now(UTC) - timedelta(seconds=grace)
    for info in reversed(infos):  # children first
        if info.kind is not Kind.COMMITTED or info.key in gone:
            continue
        if info.key in live:
            report.kept += 1
        elif _recent(info, cutoff):
            report.kept_recent += 1
            mark(info.key)
        elif dry_run or _remove(snapshotter, info.key, report):
            report.removed.append(info.key)
            gone.add(info.key)
        else:
            mark(info.key)
    return report
