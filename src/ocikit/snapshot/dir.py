"""The ``dir`` snapshotter: every snapshot is a complete directory tree.

It needs no kernel feature and no privilege, so it works rootless and on any filesystem;
the price is that preparing a snapshot copies its parent's whole tree. The copy reflinks
file data where the filesystem can share extents (btrfs, xfs with reflink), so there it
costs metadata only; elsewhere the kernel copies the bytes (``copy_file_range``). A
committed snapshot is never handed out writable again: views bind it read-only, and a new
active snapshot gets its own copy.
"""

from __future__ import annotations

from pathlib import Path

from ._common import Record, SnapshotterBase
from .base import Kind, Mount
from .trees import copy_tree, syncfs

__all__ = ["DirSnapshotter"]


class DirSnapshotter(SnapshotterBase):
    name = "dir"

    def _populate(self, kind: Kind, target: Path, chain: list[Record]) -> None:
        (target / "fs").mkdir(mode=0o755)
        if kind is Kind.ACTIVE and chain:
            copy_tree(chain[0].path / "fs", target / "fs")
            # The copy must be on disk before the row that says it is complete.
            syncfs(target)

    def _mounts(self, record: Record, chain: list[Record]) -> list[Mount]:
        if record.kind is Kind.VIEW:
            source = chain[0].path / "fs" if chain else record.path / "fs"
            return [Mount("bind", str(source), ("rbind", "ro"))]
        return [Mount("bind", str(record.path / "fs"), ("rbind", "rw"))]

    def _before_commit(self, record: Record) -> None:
        syncfs(record.path)
