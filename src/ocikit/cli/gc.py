"""``ocikit gc``: garbage-collect the local image store or, with ``--root``/``--config``, a
registry's storage; either is safe beside running writers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import sys
from typing import Any

from ..registry.settings import SettingsError, load_settings, registry_selected
from ._shared import add_registry_options


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "gc",
        help="remove unreferenced blobs from the local store, or (--root) from a registry",
        description=(
            "Without --root/--storage/--metadata/--config (nor, unless --store or --snapshots is "
            "given, OCIKIT_ROOT, OCIKIT_STORAGE, OCIKIT_METADATA or OCIKIT_CONFIG in the "
            "environment): collect the local image store (--store): blobs that no name in "
            "it reaches (through indexes, manifests, configs, layers; referrers of kept images are "
            "kept) and that are older than the grace period (default 1 hour) are removed, as are "
            "staging files of interrupted copies. Then, on every snapshotter under --snapshots, the "
            "committed layer snapshots that no stored image (any platform, named or not) and no "
            "bundle or LXC container uses, and that are older than the grace period; the "
            "writable snapshot of a bundle whose directory was deleted without `ocikit rm` is "
            "released when nothing is mounted from it. "
            "With --root, --storage, --metadata or --config, or those variables set: mark and sweep "
            "the registry there: "
            "manifests that are tagged, recent, or reachable from those (index children, referrers of "
            "a live subject) are kept, and so are the blobs they use; repositories left empty go. "
            "Anything newer than the grace period is kept, so a push that takes less than the grace "
            "period is never broken (keep the grace above your longest push). "
            "Safe to run while `ocikit serve` replicas use the same storage. Expired uploads are "
            "purged too."
        ),
    )
    add_registry_options(
        parser, root_help="registry data directory", config_help="TOML settings file, as for ocikit serve"
    )
    parser.add_argument("--grace", type=float, metavar="SECONDS", help="override gc_grace")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="the local image store to collect [env OCIKIT_STORE, default ~/.local/share/ocikit/store]",
    )
    parser.add_argument(
        "--snapshots",
        metavar="DIR",
        help="snapshotter state to collect with the store [env OCIKIT_SNAPSHOTS, default "
        "~/.local/share/ocikit/snapshots]",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    registry_flags = {"root": args.root, "storage": args.storage, "metadata": args.metadata}
    local = args.store is not None or args.snapshots is not None
    if not registry_selected(registry_flags, args.config, local_store_flag=local):
        return _collect_store(args)
    try:
        settings = load_settings(registry_flags, config_file=args.config)
    except SettingsError as exc:
        print(f"ocikit gc: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_collect(settings, args.dry_run, args.grace))


async def _collect(settings: Any, dry_run: bool, grace: float | None) -> int:
    from ..registry.app import Registry
    from ..registry.maintenance import GCBusy, collect_garbage, purge_expired_uploads
    from ..registry.storage import SchemaError, StorageUnavailable

    try:
        registry = Registry(settings)
        await registry.blobs.open()
        await registry.metadata.open()
        try:
            uploads = [] if dry_run else await purge_expired_uploads(registry)
            report = await collect_garbage(registry, dry_run=dry_run, grace=grace)
        finally:
            await registry.metadata.close()
            await registry.blobs.close()
    except (StorageUnavailable, SchemaError, GCBusy, SettingsError, OSError, sqlite3.Error) as exc:
        print(f"ocikit gc: {exc}", file=sys.stderr)
        return 1
    verb = "would remove" if dry_run else "removed"
    for repository, digest in report.manifests:
        print(f"{verb} manifest {repository}@{digest}")
    for repository, digest in report.blob_links:
        print(f"{verb} blob link {repository}@{digest}")
    for digest in report.blobs:
        print(f"{verb} blob {digest}")
    for repository in report.repositories:
        print(f"{verb} empty repository {repository}")
    print(
        f"{verb}: {len(report.manifests)} manifests, {len(report.blob_links)} blob links, "
        f"{len(report.blobs)} blobs ({report.freed_bytes} bytes), {len(report.repositories)} empty "
        f"repositories, {len(uploads)} expired uploads"
    )
    return 0


def _collect_store(args: argparse.Namespace) -> int:
    from ..store.chains import stored_chain_ids
    from ..store.images import ImageStore
    from ..store.maintenance import DEFAULT_GRACE, collect_garbage
    from ..store.transport import TransportError

    grace = DEFAULT_GRACE if args.grace is None else args.grace
    try:
        with ImageStore(args.store) as store:
            report = collect_garbage(store.layout, grace=grace, dry_run=args.dry_run)
            _print_store_report(report, args.dry_run)
            chains = stored_chain_ids(store)
    except (TransportError, ValueError, OSError) as exc:
        # Without every image's ChainIDs no snapshot can be judged unused: none is touched.
        print(f"ocikit gc: {exc}", file=sys.stderr)
        return 1
    return _collect_snapshots(args, chains, grace)


def _collect_snapshots(args: argparse.Namespace, chains: set[str], grace: float) -> int:
    """Collect every snapshotter that was used here. One that cannot be opened (a zfs pool
    since destroyed, a daemon not running) is reported and skipped: the others are still
    collected, and the exit status and a closing summary say what was not."""
    from ..bundle.unpack import snapshot_root
    from ..snapshot import BACKENDS

    used = [name for name in sorted(BACKENDS) if (snapshot_root(name, args.snapshots) / "lock").exists()]
    failed = [name for name in used if not _collect_backend(name, args, chains, grace)]
    if failed:
        print(
            f"ocikit gc: {len(failed)} of {len(used)} snapshotters could not be collected: "
            f"{', '.join(failed)} (reasons above)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _collect_backend(name: str, args: argparse.Namespace, chains: set[str], grace: float) -> bool:
    from ..bundle.gc import collect_snapshots
    from ..bundle.unpack import snapshot_root
    from ..snapshot import SnapshotError, open_snapshotter

    verb = "would remove" if args.dry_run else "removed"
    root = snapshot_root(name, args.snapshots)
    try:
        with contextlib.closing(open_snapshotter(name, root)) as snapshotter:
            report = collect_snapshots(snapshotter, chains, grace=grace, dry_run=args.dry_run)
    except (SnapshotError, OSError) as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the zfs command printed
        print(f"ocikit gc: {name} snapshots at {root}: {reason}", file=sys.stderr)
        return False
    for key, directory in report.released:
        print(f"{verb} snapshot {name} {key} (bundle {directory} is gone)")
    for key in report.removed:
        print(f"{verb} snapshot {name} {key}")
    for key, why in report.refused:
        print(f"kept snapshot {name} {key}: {why}", file=sys.stderr)
    print(
        f"{verb}: {len(report.removed)} {name} snapshots and {len(report.released)} of deleted "
        f"bundles; kept {report.kept} in use and {report.kept_recent} recent"
    )
    return True


def _print_store_report(report: Any, dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    for digest in report.removed:
        print(f"{verb} blob {digest}")
    print(
        f"{verb}: {len(report.removed)} blobs ({report.freed_bytes} bytes), "
        f"{report.staging_purged} staging files; kept {report.kept} referenced and "
        f"{report.kept_recent} recent blobs"
    )
