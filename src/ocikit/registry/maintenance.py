"""Housekeeping: purging abandoned uploads and garbage collection, offline or online.

Collection is mark-and-sweep over the metadata: manifests that are tagged, recent, or
reachable from those (an index's children, referrers of a live subject) live; so do blob
links that a live manifest uses or that are recent. The grace period protects a push in
progress, whose blobs arrive before the manifest that references them.

Replicas coordinate through the metadata store only. One of them at a time does the
housekeeping (the ``housekeeping`` lease), one of those with ``gc_interval`` set schedules
online collection (the ``online-gc`` lease); one collection at a time runs, online or from
``ocikit gc`` (the ``gc`` lease). A collection enters the blobs it removes as *being
deleted* before it deletes their bytes, and a push of the same digest announces itself
before publishing (``publish_begin``), so the two cannot interleave: the push waits until the
old bytes are gone, and blobs announced by a push are never collected. A collection that
crashed leaves its deletions recorded; the housekeeping replica finishes them once its lease
has expired, or the next collection does, first. Since a collection may also merely stall,
every delete of bytes is fenced by the ``gc`` lease (:func:`_delete_bytes`), and a push whose
announcement expired while it stalled is refused its link if a collection swept the digest
meanwhile (``link_blob``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from ..spec.digest import Digest
from .storage.base import GCReport

if TYPE_CHECKING:
    from .app import Registry

__all__ = [
    "GCBusy",
    "collect_garbage",
    "finish_interrupted_deletions",
    "purge_expired_uploads",
    "start_background",
]

log = logging.getLogger("ocikit.registry.maintenance")
_TICK: Final = 60.0
_GC_LEASE: Final = "gc"
_GC_LEASE_TTL: Final = 60.0
#: A delete of bytes is cut off after this long, so that it cannot outlive the lease that
#: fences it: what is left of the lease is the margin for a request already on its way.
_DELETE_WITHIN: Final = _GC_LEASE_TTL / 2
_HOUSEKEEPING_LEASE: Final = "housekeeping"
_ONLINE_GC_LEASE: Final = "online-gc"


class GCBusy(RuntimeError):
    """Another garbage collection holds the lease."""


async def purge_expired_uploads(reg: Registry, now: float | None = None) -> list[str]:
    """Delete upload sessions idle for longer than ``upload_expiry``, and their staged data."""
    cutoff = (now or time.time()) - reg.settings.upload_expiry
    purged = []
    for upload in await reg.metadata.uploads_older_than(cutoff):
        await reg.blobs.stage_abort(upload.id, upload.stage)
        await reg.metadata.upload_delete(upload.id)
        purged.append(upload.id)
    # Staged data whose session was never recorded (a crash between the two steps).
    async for upload_id, changed in reg.blobs.staged():
        if changed < cutoff and await reg.metadata.upload(upload_id) is None:
            await reg.blobs.stage_abort(upload_id, None)
            purged.append(upload_id)
    return purged


class _GCLease:
    """The ``gc`` lease: it fences the deletion of bytes, renewed before each (see
    :func:`_delete_bytes`)."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.holder = uuid.uuid4().hex
        #: A delete of bytes was cut off by its deadline: it may still reach the blob store,
        #: so the lease is left to expire rather than handed over at once.
        self.in_doubt = False

    async def renew(self) -> None:
        if not await self.reg.metadata.lease_acquire(_GC_LEASE, self.holder, _GC_LEASE_TTL):
            raise GCBusy("another garbage collection is running")

    async def release(self) -> None:
        if not self.in_doubt:
            await self.reg.metadata.lease_release(_GC_LEASE, self.holder)


async def collect_garbage(reg: Registry, *, dry_run: bool = False, grace: float | None = None) -> GCReport:
    """Remove unreferenced untagged manifests, blob links, blobs and empty repositories older
    than the grace period; :class:`GCBusy` when another collection runs."""
    cutoff = time.time() - (reg.settings.gc_grace if grace is None else grace)
    if dry_run:
        report = await reg.metadata.collect_garbage(cutoff, dry_run=True)
        async for digest, info in reg.blobs.digests():
            if info.modified < cutoff and not await reg.metadata.blob_is_recorded(digest):
                report.blobs.append(digest)
                report.freed_bytes += info.size
        return report
    lease = _GCLease(reg)
    await lease.renew()
    try:
        await _finish_deletions(reg, lease)
        report = await reg.metadata.collect_garbage(cutoff, dry_run=False)
        for digest in report.blobs:
            await _delete_bytes(reg, lease, digest)
        await _delete_strays(reg, lease, report, cutoff)
    finally:
        await lease.release()
    return report


async def finish_interrupted_deletions(reg: Registry) -> int:
    """Delete the bytes of blobs that a collection which crashed had entered as being deleted
    (pushes of the same digests wait for it); nothing while a collection runs."""
    if not await reg.metadata.blobs_being_deleted():
        return 0
    lease = _GCLease(reg)
    try:
        await lease.renew()
    except GCBusy:
        return 0  # the running collection finishes its own deletions
    try:
        return await _finish_deletions(reg, lease)
    finally:
        await lease.release()


async def _finish_deletions(reg: Registry, lease: _GCLease) -> int:
    pending = await reg.metadata.blobs_being_deleted()
    for digest in pending:
        await _delete_bytes(reg, lease, digest)
    return len(pending)


async def _delete_bytes(reg: Registry, lease: _GCLease, digest: Digest) -> None:
    """Delete a blob's bytes if it is still being deleted, fenced by the ``gc`` lease.

    The digest comes from a list read earlier. Had this collection stalled for longer than
    its lease, another one may have taken the lease, deleted the same bytes, let a push
    publish the digest again and released the lease: deleting from the stale list would then
    lose the new bytes. So, right before deleting, the store renews the lease and confirms
    that the digest is still being deleted (pushes of it wait meanwhile), and the delete must
    finish well within the lease, counted from before that check on this replica's monotonic
    clock; only then may the digest be released to pushes, and only while the lease is still
    this collection's. (What no check here can stop: a process frozen after it handed the
    request to the network and woken after the lease; no object store fences a delete.)"""
    deadline = time.monotonic() + _DELETE_WITHIN
    if not await reg.metadata.blob_delete_fence(digest, _GC_LEASE, lease.holder, _GC_LEASE_TTL):
        await lease.renew()  # GCBusy if the lease is another's; else the deletion is done
        return
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            await reg.blobs.delete(digest)
    except TimeoutError:
        lease.in_doubt = True
        raise TimeoutError(
            f"deleting the bytes of {digest} took longer than {_DELETE_WITHIN:g} s; "
            "the next collection deletes them"
        ) from None
    await reg.metadata.blob_deleted(digest, _GC_LEASE, lease.holder)


async def _delete_strays(reg: Registry, lease: _GCLease, report: GCReport, cutoff: float) -> None:
    """Bytes that no record names: a crash after publishing them, before recording them."""
    swept = set(report.blobs)
    async for digest, info in reg.blobs.digests():
        if digest in swept or info.modified >= cutoff:
            continue
        if await reg.metadata.blob_delete_begin(digest):
            await _delete_bytes(reg, lease, digest)
            report.blobs.append(digest)
            report.freed_bytes += info.size


def _tick(reg: Registry) -> float:
    """How often to look: often enough for short expiry and GC intervals, at most every minute."""
    candidates = [_TICK, reg.settings.upload_expiry / 4]
    if reg.settings.gc_interval:
        candidates.append(reg.settings.gc_interval)
    return max(0.5, min(candidates))


def start_background(reg: Registry) -> list[asyncio.Task[None]]:
    """Periodic upload purging on one replica and, when ``gc_interval`` is set, online GC on
    one of the replicas that have it set."""
    tasks = [
        asyncio.create_task(_led(reg, _HOUSEKEEPING_LEASE, _housekeeping_round), name="ocikit-housekeeping")
    ]
    if reg.settings.gc_interval:
        tasks.append(
            asyncio.create_task(_led(reg, _ONLINE_GC_LEASE, _online_gc_round), name="ocikit-online-gc")
        )
    return tasks


async def _led(reg: Registry, lease: str, work: Callable[[Registry, float], Awaitable[float]]) -> None:
    """Run ``work`` every tick while this replica holds ``lease``. Online GC has a lease of its
    own, taken only by replicas with ``gc_interval`` set: a leader of the shared housekeeping
    that has GC off must not keep collection from running anywhere."""
    holder = uuid.uuid4().hex
    last = time.time()
    while True:
        tick = _tick(reg)
        try:
            # Held a little longer than a tick, so the leader keeps it from one round to the next.
            if await reg.metadata.lease_acquire(lease, holder, tick * 3):
                last = await work(reg, last)
        except Exception:
            log.exception("%s failed", lease)
        await asyncio.sleep(tick)


async def _housekeeping_round(reg: Registry, last: float) -> float:
    try:
        purged = await purge_expired_uploads(reg)
        if purged:
            log.info("purged %d expired uploads", len(purged))
    except Exception:
        log.exception("purging expired uploads failed")
    try:
        finished = await finish_interrupted_deletions(reg)
        if finished:
            log.info("finished deleting %d blobs of an interrupted garbage collection", finished)
    except Exception:
        log.exception("finishing an interrupted garbage collection failed")
    return last


async def _online_gc_round(reg: Registry, last_gc: float) -> float:
    if time.time() - last_gc < reg.settings.gc_interval:
        return last_gc
    try:
        report = await collect_garbage(reg)
        log.info(
            "gc removed %d manifests, %d blobs (%d bytes), %d repositories",
            len(report.manifests),
            len(report.blobs),
            report.freed_bytes,
            len(report.repositories),
        )
    except GCBusy:
        log.info("gc skipped: another garbage collection is running")
    except Exception:
        log.exception("online garbage collection failed")
    return time.time()
