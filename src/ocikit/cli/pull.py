"""``ocikit pull REF``: an image from a registry into the local store."""

from __future__ import annotations

import argparse
from typing import Any

from ..client.transports import parse_transport
from ..store.transport import TransportError
from ._shared import run_command
from .copy import add_copy_options, copy_locations


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "pull",
        help="copy an image from a registry into the local store",
        description=(
            "Pull REF (busybox, ghcr.io/org/app:1.2, name@sha256:…) into the local store, under its "
            "full name (docker.io/library/busybox:latest). The same as "
            "`ocikit copy docker://REF REF`; every platform unless --platform picks one."
        ),
    )
    parser.add_argument("reference", metavar="REF")
    add_copy_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        if args.reference.startswith(("docker://", "oci:", "oci-archive:")):
            raise TransportError(f"{args.reference}: pull takes a plain reference; use ocikit copy")
        local = parse_transport(args.reference)
        return await copy_locations(parse_transport(f"docker://{local.reference}"), local, args)

    return run_command("pull", work())
