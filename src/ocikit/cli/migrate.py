"""``ocikit migrate``: bring a registry's metadata database to this version's schema."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..registry.settings import SettingsError, load_settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "migrate",
        help="apply the registry's metadata schema migrations (SQLite or PostgreSQL)",
        description=(
            "Apply the pending schema migrations to a registry's metadata database, each in one "
            "transaction, so that `ocikit serve` of this version can use it. An empty database gets "
            "the whole schema; one already current is left as it is. Safe to run from several "
            "places at once (the first migrates, the others find nothing to do). Stop the replicas "
            "of an older version first: they do not know the new schema."
        ),
    )
    parser.add_argument(
        "--metadata", metavar="URL", help="sqlite:///PATH or postgresql://... [env OCIKIT_METADATA]"
    )
    parser.add_argument(
        "--root", help="registry data directory, for the default sqlite database [env OCIKIT_ROOT]"
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file, as for ocikit serve")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..registry.storage import SchemaError, StorageUnavailable, metadata_store_for

    try:
        settings = load_settings({"metadata": args.metadata, "root": args.root}, config_file=args.config)
        store = metadata_store_for(settings)
    except SettingsError as exc:
        print(f"ocikit migrate: {exc}", file=sys.stderr)
        return 2

    async def migrate() -> tuple[int, int]:
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        before, after = asyncio.run(migrate())
    except (StorageUnavailable, SchemaError) as exc:
        print(f"ocikit migrate: {exc}", file=sys.stderr)
        return 1
    name = getattr(store, "url", "the metadata database")
    if before == after:
        print(f"{name}: schema version {after}, nothing to migrate")
    else:
        print(f"{name}: migrated from schema version {before} to {after}")
    return 0
