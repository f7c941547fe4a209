"""``ocikit fsck``: re-verify every blob of the local store or, with ``--root``/``--config``,
check a registry's stored manifests, tags and blobs against each other."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from typing import TYPE_CHECKING, Any

from ..registry.settings import SettingsError, load_settings, registry_selected
from ..store.images import ImageStore
from ..store.maintenance import check_blobs
from ._shared import add_format_option, add_registry_options, add_store_option, print_json, run_command

if TYPE_CHECKING:
    from ..registry.integrity import IntegrityReport
    from ..registry.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "fsck",
        help="re-verify every blob of the local store, or (--root) a registry's content",
        description=(
            "Hash every blob and compare it with its name; list corrupt blobs and referenced blobs "
            "that are missing. Exit 0 when all is well, 1 otherwise. With --delete corrupt blobs are "
            "removed, so that pulling the image again restores them. "
            "With --root, --storage, --metadata or --config (or, unless --store is given, "
            "OCIKIT_ROOT, OCIKIT_STORAGE, OCIKIT_METADATA or OCIKIT_CONFIG in the environment): "
            "check the registry there, one line per "
            "problem: manifests whose bytes do not match their digest or break the image-spec, "
            "descriptors that disagree with stored content (size; an index's manifests also "
            "mediaType), blobs or child manifests that "
            "are absent (unless sparse_manifests is set), blob records whose bytes are missing or have "
            "another size, and tags that point at no manifest. Safe beside a running `ocikit serve`."
        ),
    )
    parser.add_argument("--delete", action="store_true", help="remove corrupt blobs (local store only)")
    add_registry_options(
        parser,
        root_help="a registry data directory to check",
        config_help="a registry's TOML settings file, as for ocikit serve",
    )
    add_format_option(parser)
    add_store_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if registry_selected(_registry_flags(args), args.config, local_store_flag=args.store is not None):
        return _check_registry(args)

    async def work() -> int:
        with ImageStore(args.store) as store:
            report = await asyncio.to_thread(check_blobs, store.layout, delete=args.delete)
        if args.format == "json":
            print_json(
                {
                    "checked": report.checked,
                    "corrupt": [{"digest": d, "problem": p} for d, p in report.corrupt],
                    "missing": report.missing,
                    "removed": report.removed,
                }
            )
        else:
            for digest, problem in report.corrupt:
                removed = " (removed)" if digest in report.removed else ""
                print(f"corrupt: {digest}: {problem}{removed}")
            for digest in report.missing:
                print(f"missing: {digest}")
            print(
                f"checked {report.checked} blobs: {len(report.corrupt)} corrupt, "
                f"{len(report.missing)} missing, {len(report.removed)} removed"
            )
        return 0 if report.ok else 1

    return run_command("fsck", work())


def _registry_flags(args: argparse.Namespace) -> dict[str, str | None]:
    return {"root": args.root, "storage": args.storage, "metadata": args.metadata}


def _check_registry(args: argparse.Namespace) -> int:
    from ..registry.storage import SchemaError, StorageUnavailable

    if args.delete:
        print("ocikit fsck: --delete applies to the local store, not to a registry", file=sys.stderr)
        return 2
    try:
        settings = load_settings(_registry_flags(args), config_file=args.config)
    except SettingsError as exc:
        print(f"ocikit fsck: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_registry_report(settings))
    except (StorageUnavailable, SchemaError, OSError, sqlite3.Error) as exc:
        print(f"ocikit fsck: cannot check the registry: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print_json(
            {
                "repositories": report.repositories,
                "manifests": report.manifests,
                "tags": report.tags,
                "problems": [
                    {"repository": p.repository, "item": p.item, "problem": p.problem}
                    for p in report.problems
                ],
            }
        )
    else:
        for problem in report.problems:
            print(problem)
        print(
            f"checked {report.repositories} repositories, {report.manifests} manifests, {report.tags} tags: "
            f"{len(report.problems)} problems"
        )
    return 0 if report.ok else 1


async def _registry_report(settings: Settings) -> IntegrityReport:
    from ..registry.app import Registry
    from ..registry.integrity import check_registry

    registry = Registry(settings)
    await registry.blobs.open()
    try:
        await registry.metadata.open()
        try:
            return await check_registry(registry.metadata, registry.blobs, sparse=settings.sparse_manifests)
        finally:
            await registry.metadata.close()
    finally:
        await registry.blobs.close()
