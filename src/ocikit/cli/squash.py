"""``ocikit squash IMAGE NEWREF [--from N]``: layers N.. of an image merged into one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..bundle.surgery import squash_image
from ..client.transports import parse_transport
from ..store.images import ImageStore
from ._shared import run_command
from ._surgery import NEWREF_HELP, SURGERY_ERRORS, add_output_options, publish, store_name, target
from .create import add_snapshotter_options, open_chosen_snapshotter, stored_image


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "squash",
        help="merge an image's layers (all, or from the N-th on) into one",
        description=(
            "Write IMAGE with its layers N.. (counting from 0; all by default) replaced by one layer "
            "holding the same files: what they deleted of the layers below N stays deleted (as "
            "whiteouts), what they deleted of each other is gone. The history of the squashed "
            "layers becomes one entry. Uses the snapshotter of `ocikit create` (the layers below N "
            "are unpacked there, or found cached)."
        ),
    )
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("newref", metavar="NEWREF", help=NEWREF_HELP)
    parser.add_argument(
        "--from", dest="start", type=int, default=0, metavar="N", help="first layer to merge (0)"
    )
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="from an index (default: this host)")
    add_snapshotter_options(parser)
    add_output_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        spec = target(args.newref)
        image = await stored_image(parse_transport(args.image), args)
        try:
            snapshotter = open_chosen_snapshotter(args)
            try:
                with ImageStore(args.store) as store:
                    result = squash_image(
                        image,
                        store,
                        snapshotter,
                        store_name(spec),
                        start=args.start,
                        compression=args.compression,
                    )
            finally:
                snapshotter.close()
        except SURGERY_ERRORS as exc:
            print(f"ocikit squash: {exc}", file=sys.stderr)
            return 1
        return await publish("squash", result, spec, args)

    return run_command("squash", work())
