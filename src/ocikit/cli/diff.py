"""``ocikit diff BUNDLE``: what changed in a bundle's rootfs since ``ocikit create`` made it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..bundle import BundleError, read_state
from ..bundle.surgery import snapshot_changes
from ..bundle.unpack import bundle_snapshotter
from ..layers import LayerError
from ..layers.diff import Change
from ..snapshot import SnapshotError
from ._shared import add_format_option, print_json


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "diff",
        help="list what changed in a bundle's rootfs (A added, C changed, D deleted)",
        description=(
            "List the entries that `ocikit commit` would write for BUNDLE, one per line: A (added), "
            "C (changed: content, mode, owner, times, xattrs, type) or D (deleted), and the path."
        ),
    )
    parser.add_argument("bundle", metavar="BUNDLE")
    add_format_option(parser)
    parser.set_defaults(run=run)


def _show(change: Change, as_json: bool) -> None:
    path = "/" + os.fsdecode(change.path)
    if as_json:
        print_json({"action": change.action, "path": path})
    else:
        sys.stdout.write(f"{change.action} {path}\n")


def run(args: argparse.Namespace) -> int:
    try:
        state = read_state(args.bundle)
        snapshotter = bundle_snapshotter(state)
        try:
            with snapshot_changes(snapshotter, state.key, state.parent, classify=True) as (_, report):
                for change in sorted(report.changes, key=Change.sort_key):
                    _show(change, args.format == "json")
        finally:
            snapshotter.close()
    except (BundleError, LayerError, SnapshotError, OSError) as exc:
        print(f"ocikit diff: {exc}", file=sys.stderr)
        return 1
    for warning in report.warnings:
        print(f"ocikit diff: warning: {warning}", file=sys.stderr)
    return 0
