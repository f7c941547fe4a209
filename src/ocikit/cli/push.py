"""``ocikit push REF [DST]``: an image from the local store to a registry (or anywhere)."""

from __future__ import annotations

import argparse
from typing import Any

from ..client.transports import parse_transport
from ._shared import run_command
from .copy import LOCATIONS, add_copy_options, copy_locations


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "push",
        help="copy an image from the local store to a registry",
        description=(
            "Push the stored image REF to DST, by default to the registry its name says "
            "(docker://REF). " + LOCATIONS
        ),
    )
    parser.add_argument("reference", metavar="REF")
    parser.add_argument("destination", metavar="DST", nargs="?")
    add_copy_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        local = parse_transport(args.reference)
        destination = parse_transport(args.destination or f"docker://{local.reference}")
        return await copy_locations(local, destination, args)

    return run_command("push", work())
