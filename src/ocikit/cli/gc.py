"""``ocikit gc``: garbage-collect a registry's storage, safely beside a running server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..registry.settings import SettingsError, load_settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "gc",
        help="remove unreferenced blobs and untagged manifests from a registry's storage",
        description=(
            "Mark and sweep the registry under --root: manifests that are tagged, recent, or reachable "
            "from those (index children, referrers of a live subject) are kept, and so are the blobs they "
            "use. Anything newer than the grace period is kept, so a push in progress is never broken. "
            "Safe to run while `ocikit serve` uses the same root. Expired uploads are purged too."
        ),
    )
    parser.add_argument("--root", help="registry data directory [env OCIKIT_ROOT]")
    parser.add_argument("--config", metavar="FILE", help="TOML settings file, as for ocikit serve")
    parser.add_argument("--grace", type=float, metavar="SECONDS", help="override gc_grace")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings({"root": args.root}, config_file=args.config)
    except SettingsError as exc:
        print(f"ocikit gc: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_collect(settings, args.dry_run, args.grace))


async def _collect(settings: Any, dry_run: bool, grace: float | None) -> int:
    from ..registry.app import Registry
    from ..registry.maintenance import collect_garbage, purge_expired_uploads

    registry = Registry(settings)
    await registry.blobs.open()
    await registry.metadata.open()
    try:
        uploads = [] if dry_run else await purge_expired_uploads(registry)
        report = await collect_garbage(registry, dry_run=dry_run, grace=grace)
    finally:
        await registry.metadata.close()
        await registry.blobs.close()
    verb = "would remove" if dry_run else "removed"
    for repository, digest in report.manifests:
        print(f"{verb} manifest {repository}@{digest}")
    for repository, digest in report.blob_links:
        print(f"{verb} blob link {repository}@{digest}")
    for digest in report.blobs:
        print(f"{verb} blob {digest}")
    print(
        f"{verb}: {len(report.manifests)} manifests, {len(report.blob_links)} blob links, "
        f"{len(report.blobs)} blobs ({report.freed_bytes} bytes), {len(uploads)} expired uploads"
    )
    return 0
