"""``ocikit commit BUNDLE NEWREF``: a bundle's changes as a new layer on top of its image."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..bundle import read_state
from ..bundle.surgery import commit_bundle
from ..bundle.unpack import bundle_snapshotter
from ..store.images import ImageStore
from ._shared import run_command
from ._surgery import NEWREF_HELP, SURGERY_ERRORS, add_output_options, publish, store_name, target


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "commit",
        help="turn the changes in a bundle's rootfs into a new layer of its image",
        description=(
            "Write what changed in BUNDLE/rootfs (a bundle made by `ocikit create`) since it was "
            "created as one layer (deletions as whiteouts, replaced directories as opaque), append it "
            "to the image the bundle was made from, and store the result as NEWREF. Stop the container "
            "first: a file that changes while it is read is refused."
        ),
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    parser.add_argument("newref", metavar="NEWREF", help=NEWREF_HELP)
    parser.add_argument("-m", "--message", help="the comment of the new history entry")
    parser.add_argument("-a", "--author", help="the author of the new layer (and image)")
    add_output_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        spec = target(args.newref)
        try:
            state = read_state(args.bundle)
            snapshotter = bundle_snapshotter(state)
            try:
                with ImageStore(args.store) as store:
                    result = commit_bundle(
                        args.bundle,
                        store,
                        snapshotter,
                        store_name(spec),
                        message=args.message,
                        author=args.author,
                        compression=args.compression,
                    )
            finally:
                snapshotter.close()
        except SURGERY_ERRORS as exc:
            print(f"ocikit commit: {exc}", file=sys.stderr)
            return 1
        return await publish("commit", result, spec, args)

    return run_command("commit", work())
