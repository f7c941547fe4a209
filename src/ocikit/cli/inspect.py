"""``ocikit inspect IMAGE``: manifest, config, layers, platforms and sizes of an image."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from ..client.transports import open_source, parse_transport
from ..store.inspect import ImageDescription, ManifestDescription, describe
from ._shared import (
    add_format_option,
    add_store_option,
    human_size,
    parse_platform_option,
    print_json,
    run_command,
)
from .copy import LOCATIONS
from .images import unique_size


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect",
        help="show an image's manifest, config, layers and platforms",
        description="Describe IMAGE (every platform of an index unless --platform). " + LOCATIONS,
    )
    parser.add_argument("image", metavar="IMAGE")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--raw", action="store_true", help="print the manifest or index exactly as stored")
    shown.add_argument("--config", action="store_true", help="print the config exactly as stored")
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="only this platform of an index")
    add_format_option(parser)
    add_store_option(parser)
    parser.set_defaults(run=run)


def _manifest_json(manifest: ManifestDescription) -> dict[str, Any]:
    return {
        "digest": manifest.descriptor.digest,
        "mediaType": manifest.descriptor.media_type,
        "platform": None if manifest.platform is None else str(manifest.platform),
        "size": manifest.size,
        "config": {
            "digest": manifest.config_descriptor.digest,
            "mediaType": manifest.config_descriptor.media_type,
            "size": manifest.config_descriptor.size,
            "value": msgspec.json.decode(manifest.config_raw) if manifest.config is not None else None,
        },
        "layers": [msgspec.to_builtins(layer) for layer in manifest.layers],
    }


def _as_json(image: ImageDescription, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "digest": image.descriptor.digest,
        "mediaType": image.descriptor.media_type,
        "size": unique_size(image),
        "platforms": [str(p) for p in image.platforms],
        "manifests": [_manifest_json(m) for m in image.manifests],
    }


def _print_text(image: ImageDescription, name: str) -> None:
    print(f"Name:       {name}")
    print(f"Digest:     {image.descriptor.digest}")
    print(f"MediaType:  {image.descriptor.media_type}")
    print(f"Size:       {human_size(unique_size(image))}")
    if image.platforms:
        print(f"Platforms:  {', '.join(map(str, image.platforms))}")
    for manifest in image.manifests:
        print()
        print(f"Manifest {manifest.descriptor.digest} ({manifest.platform or 'no platform'})")
        config = manifest.config
        if config is not None:
            print(f"  Created:  {config.created or '-'}")
            if config.config is not None:
                entrypoint = (config.config.entrypoint or []) + (config.config.cmd or [])
                print(f"  Command:  {' '.join(entrypoint) or '-'}")
        print(f"  Config:   {manifest.config_descriptor.digest} ({manifest.config_descriptor.size} B)")
        print(f"  Layers:   {len(manifest.layers)}, {human_size(sum(x.size for x in manifest.layers))}")
        for layer in manifest.layers:
            print(f"    {layer.digest}  {human_size(layer.size):>9}  {layer.media_type}")


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        spec = parse_transport(args.image)
        source = open_source(spec, store=args.store)
        try:
            image = await describe(source, spec.reference, parse_platform_option(args.platform))
        finally:
            await source.close()
        if args.raw:
            chosen = image.manifests[0].raw if args.platform and image.manifests else image.raw
            sys.stdout.buffer.write(chosen)
        elif args.config:
            if len(image.manifests) != 1:
                message = "the image has several platforms; choose one with --platform"
                print(f"ocikit inspect: {message}", file=sys.stderr)
                return 2
            sys.stdout.buffer.write(image.manifests[0].config_raw)
        elif args.format == "json":
            print_json(_as_json(image, spec.reference or spec.text))
        else:
            _print_text(image, spec.reference or spec.text)
        return 0

    return run_command("inspect", work())
