"""Garbage collection and integrity checks of an image layout (the local store in particular).

Garbage collection marks from every ``index.json`` entry, named or not, through indexes,
manifests, configs and layers, and also keeps referrers (signatures, SBOMs) whose subject is
kept, whether or not they are listed. Nothing reachable is ever removed. Blobs younger than
the grace period are kept as well, because a copy in progress writes its blobs before the
manifest that references them; the store's destination refreshes the mtime of blobs it
reuses for the same reason. Staging files left by crashed writes are purged once they are
older than the grace period.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from ..spec.digest import SUPPORTED_ALGORITHMS, digest_error
from . import refs
from .files import digest_span
from .layout import OCILayout
from .source import MAX_DOCUMENT

__all__ = ["DEFAULT_GRACE", "FsckReport", "GCReport", "check_blobs", "collect_garbage", "reachable"]

#: Seconds an unreferenced blob or staging file is left alone after its last write.
DEFAULT_GRACE: Final = 3600.0


@dataclass
class GCReport:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept: int = 0
    kept_recent: int = 0
    staging_purged: int = 0
    entries_dropped: int = 0


@dataclass
class FsckReport:
    checked: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


def _stored_blobs(layout: OCILayout) -> dict[str, os.stat_result]:
    """Every file under ``blobs/`` named like a digest, with its lstat."""
    found: dict[str, os.stat_result] = {}
    blobs = layout.path / "blobs"
    if not blobs.is_dir():
        return found
    for algorithm in blobs.iterdir():
        if algorithm.is_symlink() or not algorithm.is_dir():
            continue
        for entry in os.scandir(algorithm):
            digest = f"{algorithm.name}:{entry.name}"
            if digest_error(digest) is None:
                found[digest] = entry.stat(follow_symlinks=False)
    return found


def _read_small(layout: OCILayout, digest: str) -> Any:
    """A blob decoded as JSON when it is a plausible document, else None."""
    blob = layout.locate(digest)
    if blob is None:
        return None
    with blob:
        if blob.size > MAX_DOCUMENT or blob.size < 2:
            return None
        raw = os.pread(blob.fd, blob.size, 0)
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None


def _children(node: Any) -> list[str]:
    """Digests a document points down to (not its subject: a referrer does not keep its
    subject alive, it is kept alive by it)."""
    if not isinstance(node, dict):
        return []
    found = []
    for key in ("manifests", "layers", "blobs"):
        items = node.get(key)
        if isinstance(items, list):
            found += [i["digest"] for i in items if isinstance(i, dict) and isinstance(i.get("digest"), str)]
    config = node.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        found.append(config["digest"])
    return found


def _subject(node: Any) -> str | None:
    subject = node.get("subject") if isinstance(node, dict) else None
    digest = subject.get("digest") if isinstance(subject, dict) else None
    return digest if isinstance(digest, str) else None


def _roots(layout: OCILayout, index: dict[str, Any], documents: dict[str, Any]) -> list[str]:
    """The entries of ``index.json`` that keep content alive: every named one, and unnamed ones
    except referrers, which live exactly as long as their subject (so that removing an
    image's last name lets its signatures go too)."""
    roots = []
    for entry in refs.entries(index):
        digest = entry["digest"]
        if refs.ref_name(entry) is None:
            documents[digest] = _read_small(layout, digest)
            if _subject(documents[digest]) is not None:
                continue
        roots.append(digest)
    return roots


def reachable(layout: OCILayout, stored: dict[str, os.stat_result] | None = None) -> set[str]:
    """Every digest reachable from ``index.json``, plus referrers of anything reachable."""
    stored = _stored_blobs(layout) if stored is None else stored
    marked: set[str] = set()
    documents: dict[str, Any] = {}
    pending = _roots(layout, layout.read_index(), documents)
    while True:
        while pending:
            digest = pending.pop()
            if digest in marked:
                continue
            marked.add(digest)
            node = documents.get(digest) if digest in documents else _read_small(layout, digest)
            pending.extend(_children(node))
        # Referrers of anything marked, listed or not; repeat, since a referrer may have its own.
        for digest in stored.keys() - marked:
            if digest not in documents:
                documents[digest] = _read_small(layout, digest)
            if _subject(documents[digest]) in marked:
                pending.append(digest)
        if not pending:
            return marked


def collect_garbage(layout: OCILayout, *, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> GCReport:
    """Remove blobs nothing reaches and that are older than ``grace`` seconds, and staging
    files of crashed writes older than that. The index lock is held throughout, so no name
    can be added to a blob between the decision to remove it and its removal."""
    report = GCReport()
    cutoff = time.time() - grace
    with layout.index_lock():
        stored = _stored_blobs(layout)
        marked = reachable(layout, stored)
        report.entries_dropped = _drop_dangling_entries(layout, marked, dry_run)
        for digest, info in sorted(stored.items()):
            if digest in marked:
                report.kept += 1
            elif info.st_mtime >= cutoff or not (
                dry_run or layout.remove_blob(digest, modified_before=cutoff)
            ):
                report.kept_recent += 1
            else:
                report.removed.append(digest)
                report.freed_bytes += info.st_size
        report.staging_purged = _purge_staging(layout, cutoff, dry_run)
    return report


def _drop_dangling_entries(layout: OCILayout, marked: set[str], dry_run: bool) -> int:
    """Unnamed ``index.json`` entries that are no longer kept (referrers of a removed image)
    go with their content, so the index never lists a blob that is gone."""

    def is_dangling(entry: Any) -> bool:
        return (
            isinstance(entry, dict)
            and refs.ref_name(entry) is None
            and isinstance(entry.get("digest"), str)
            and entry["digest"] not in marked
        )

    dangling = [entry for entry in layout.read_index().get("manifests", []) if is_dangling(entry)]
    if dangling and not dry_run:

        def drop(index: dict[str, Any]) -> None:
            index["manifests"] = [e for e in index.get("manifests", []) if not is_dangling(e)]

        layout.update_index(drop, lock_held=True)
    return len(dangling)


def _purge_staging(layout: OCILayout, cutoff: float, dry_run: bool) -> int:
    incoming = layout.incoming_dir()
    purged = 0
    try:
        for name in os.listdir(incoming):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name, dir_fd=incoming, follow_symlinks=False).st_mtime <= cutoff:
                    if not dry_run:
                        os.unlink(name, dir_fd=incoming)
                    purged += 1
    finally:
        os.close(incoming)
    return purged


def check_blobs(layout: OCILayout, *, delete: bool = False) -> FsckReport:
    """Re-hash every blob; report those whose content does not match their name and the
    reachable blobs that are missing. ``delete`` removes the corrupt ones, so that the next
    pull fetches them again instead of skipping a blob that is present but wrong."""
    report = FsckReport()
    stored = _stored_blobs(layout)
    for digest in sorted(stored):
        algorithm = digest.partition(":")[0]
        if algorithm not in SUPPORTED_ALGORITHMS:
            continue
        report.checked += 1
        problem = _blob_problem(layout, digest, algorithm)
        if problem is None:
            continue
        report.corrupt.append((digest, problem))
        if delete and layout.remove_blob(digest):
            report.removed.append(digest)
    corrupt = {digest for digest, _ in report.corrupt}
    report.missing = sorted(d for d in reachable(layout, stored) if d not in stored and d not in corrupt)
    return report


def _blob_problem(layout: OCILayout, digest: str, algorithm: str) -> str | None:
    blob = layout.locate(digest)
    if blob is None:
        return "not a regular file"
    with blob:
        actual = digest_span(blob.fd, 0, blob.size, algorithm)
    return None if actual == digest else f"content hashes to {actual}"
