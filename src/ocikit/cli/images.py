"""``ocikit images``: the images of the local store."""

from __future__ import annotations

import argparse
from typing import Any

from ..store.images import ImageStore, StoredName
from ..store.inspect import ImageDescription, describe
from ._shared import add_format_option, add_store_option, human_size, print_json, run_command


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "images",
        help="list the images of the local store",
        description="Every name in the local store with its digest, platforms and size.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="names only")
    add_format_option(parser)
    add_store_option(parser)
    parser.set_defaults(run=run)


async def _row(store: ImageStore, entry: StoredName) -> dict[str, Any]:
    image = await describe(store.source(), entry.descriptor.digest)
    return {
        "name": entry.name,
        "digest": entry.descriptor.digest,
        "mediaType": entry.descriptor.media_type,
        "platforms": [str(p) for p in image.platforms],
        "size": unique_size(image),
    }


def unique_size(image: ImageDescription) -> int:
    """Bytes stored for the image, each blob counted once (platforms share base layers)."""
    sizes = {image.descriptor.digest: image.descriptor.size}
    for manifest in image.manifests:
        for descriptor in (manifest.descriptor, manifest.config_descriptor, *manifest.layers):
            sizes[descriptor.digest] = descriptor.size
    return sum(sizes.values())


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        with ImageStore(args.store) as store:
            entries = store.names()
            if args.quiet:
                for entry in entries:
                    print(entry.name)
                return 0
            rows = [await _row(store, entry) for entry in entries]
        if args.format == "json":
            print_json(rows)
            return 0
        table = [("NAME", "DIGEST", "PLATFORMS", "SIZE")]
        for row in rows:
            digest = row["digest"].partition(":")[2][:12]
            table.append((row["name"], digest, ",".join(row["platforms"]) or "-", human_size(row["size"])))
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        return 0

    return run_command("images", work())
