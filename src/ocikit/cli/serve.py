"""``ocikit serve``: run the registry."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..registry.settings import SETTINGS, Settings, SettingsError, load_settings

_BOOLEAN = {name for name, f in Settings.__dataclass_fields__.items() if f.type == "bool"}


def register(commands: Any) -> None:
    lines = [f"  {info.env:<28} {info.flag}" for info in SETTINGS]
    parser = commands.add_parser(
        "serve",
        help="run the OCI registry",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the OCI Distribution Spec registry on Granian.\n\n"
            "Each setting comes from its flag, else its environment variable, else the TOML file\n"
            "(--config or $OCIKIT_CONFIG; keys are the flag names with underscores, optionally under\n"
            "[registry]), else its default. Environment variables:\n" + "\n".join(lines)
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")
    defaults = Settings()
    for info in SETTINGS:
        default = getattr(defaults, info.name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            info.flag,
            dest=info.name,
            metavar="BOOL" if info.name in _BOOLEAN else info.name.split("_")[-1].upper(),
            default=None,
            help=f"{info.help} [env {info.env}; default: {shown}]",
        )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..registry.server import serve
    from ..registry.storage import SchemaError, StorageUnavailable

    flags = {info.name: getattr(args, info.name) for info in SETTINGS}
    try:
        settings = load_settings(flags, config_file=args.config)
        asyncio.run(_check_storage(settings))
    except SettingsError as exc:
        print(f"ocikit serve: {exc}", file=sys.stderr)
        return 2
    except (StorageUnavailable, SchemaError) as exc:
        print(f"ocikit serve: {exc}", file=sys.stderr)
        return 1
    serve(settings)
    return 0


async def _check_storage(settings: Settings) -> None:
    """Open both stores once before any worker starts, so that bad credentials, an unreachable
    database or a schema to migrate end the command with one line rather than a worker's
    traceback."""
    from ..registry.storage import blob_store_for, metadata_store_for

    blobs, metadata = blob_store_for(settings), metadata_store_for(settings)
    try:
        await blobs.open()
        await metadata.open()
    finally:
        await metadata.close()
        await blobs.close()
