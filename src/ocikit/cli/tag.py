"""``ocikit tag SRC NEW``: a second name for a stored image."""

from __future__ import annotations

import argparse
from typing import Any

from ..store.images import ImageStore, normalize_name
from ._shared import add_store_option, run_command


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "tag",
        help="give a stored image another name",
        description="Name the image SRC points to NEW as well (both are names in the local store).",
    )
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("target", metavar="NEW")
    add_store_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        with ImageStore(args.store) as store:
            descriptor = store.tag(args.source, args.target)
        print(f"{normalize_name(args.target)} -> {descriptor.digest}")
        return 0

    return run_command("tag", work())
