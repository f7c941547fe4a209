"""``ocikit rmi REF…``: forget names in the local store (``ocikit gc`` frees the space)."""

from __future__ import annotations

import argparse
from typing import Any

from ..store.images import ImageStore
from ._shared import add_store_option, run_command


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "rmi",
        help="remove image names from the local store",
        description=(
            "Remove each name (or, for a digest, every name of that image). Blobs stay until "
            "`ocikit gc` finds that nothing references them."
        ),
    )
    parser.add_argument("references", metavar="REF", nargs="+")
    add_store_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        with ImageStore(args.store) as store:
            for reference in args.references:
                for name in store.remove(reference):
                    print(f"untagged: {name}")
        return 0

    return run_command("rmi", work())
