"""``ocikit rm BUNDLE``: unmount and remove a bundle made by ``ocikit create``, and its snapshot."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..bundle import BundleError, read_state, remove_bundle
from ..bundle.unpack import bundle_snapshotter
from ..snapshot import SnapshotError


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "rm",
        help="remove a bundle made by ocikit create, with its writable snapshot",
        description=(
            "Unmount BUNDLE/rootfs, remove its writable snapshot and delete the directory. Only "
            "directories made by `ocikit create` are touched. Delete the container from its "
            "runtime first (`runc delete ID`). The image's layer snapshots stay, for the next create."
        ),
    )
    parser.add_argument("bundles", nargs="+", metavar="BUNDLE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for bundle in args.bundles:
        try:
            state = read_state(bundle)
            snapshotter = bundle_snapshotter(state)
            try:
                remove_bundle(bundle, snapshotter)
            finally:
                snapshotter.close()
        except (BundleError, SnapshotError, OSError) as exc:
            print(f"ocikit rm: {exc}", file=sys.stderr)
            failed = 1
    return failed
