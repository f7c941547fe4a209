"""Housekeeping: purging abandoned uploads and garbage collection, offline or online.

Collection is mark-and-sweep over the metadata: manifests that are tagged, recent, or
reachable from those (an index's children, referrers of a live subject) live; so do blob
links that a live manifest uses or that are recent. The grace period protects a push in
progress, whose blobs arrive before the manifest that references them. The sweep holds the
blob store's exclusive lock so that a concurrent re-upload of a blob being deleted waits,
then re-records the blob after its bytes are gone, rather than losing them.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .storage.base import GCReport

if TYPE_CHECKING:
    from .app import Registry

__all__ = ["collect_garbage", "purge_expired_uploads", "start_background"]

log = logging.getLogger("ocikit.registry.maintenance")
_TICK = 60.0


async def purge_expired_uploads(reg: Registry, now: float | None = None) -> list[str]:
    """Delete upload sessions idle for longer than ``upload_expiry``, and their data."""
    cutoff = (now or time.time()) - reg.settings.upload_expiry
    purged = []
    for upload in await reg.metadata.uploads_older_than(cutoff):
        await reg.blobs.upload_abort(upload.id)
        await reg.metadata.upload_delete(upload.id)
        purged.append(upload.id)
    # Staged data whose session was never recorded (a crash between the two steps).
    async for upload_id in reg.blobs.upload_ids():
        if await reg.metadata.upload(upload_id) is not None:
            continue
        idle_since = await reg.blobs.upload_modified(upload_id)
        if idle_since is not None and idle_since < cutoff:
            await reg.blobs.upload_abort(upload_id)
            purged.append(upload_id)
    return purged


async def collect_garbage(reg: Registry, *, dry_run: bool = False, grace: float | None = None) -> GCReport:
    """Remove unreferenced untagged manifests, blob links and blobs older than the grace period."""
    cutoff = time.time() - (reg.settings.gc_grace if grace is None else grace)
    async with reg.blobs.sweeping():
        report = await reg.metadata.collect_garbage(cutoff, dry_run)
        for digest in report.blobs:
            if not dry_run:
                await reg.blobs.delete(digest)
        # Files with no record at all: a crash after publishing bytes, before recording them.
        async for digest in reg.blobs.digests():
            if digest in report.blobs or await reg.metadata.blob_is_recorded(digest):
                continue
            stored = await reg.blobs.modified(digest)
            if stored is None or stored >= cutoff:
                continue
            size = await reg.blobs.size(digest) or 0
            report.blobs.append(digest)
            report.freed_bytes += size
            if not dry_run:
                await reg.blobs.delete(digest)
    return report


def _tick(reg: Registry) -> float:
    """How often to look: often enough for short expiry and GC intervals, at most every minute."""
    candidates = [_TICK, reg.settings.upload_expiry / 4]
    if reg.settings.gc_interval:
        candidates.append(reg.settings.gc_interval)
    return max(0.5, min(candidates))


def start_background(reg: Registry) -> list[asyncio.Task[None]]:
    """Periodic upload purging and (when ``gc_interval`` is set) online GC, in one worker only."""
    return [asyncio.create_task(_housekeeping(reg), name="ocikit-housekeeping")]


async def _housekeeping(reg: Registry) -> None:
    lock_path = Path(reg.settings.root) / "housekeeping.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # Several worker processes share one root: the first to take the lock does the work.
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_tick(reg))
        last_gc = time.time()
        while True:
            try:
                purged = await purge_expired_uploads(reg)
                if purged:
                    log.info("purged %d expired uploads", len(purged))
            except Exception:
                log.exception("purging expired uploads failed")
            interval = reg.settings.gc_interval
            if interval and time.time() - last_gc >= interval:
                last_gc = time.time()
                try:
                    report = await collect_garbage(reg)
                    log.info(
                        "gc removed %d manifests, %d blobs (%d bytes)",
                        len(report.manifests),
                        len(report.blobs),
                        report.freed_bytes,
                    )
                except Exception:
                    log.exception("online garbage collection failed")
            await asyncio.sleep(_tick(reg))
    finally:
        os.close(fd)
