"""``ocikit fsck``: re-verify every blob of the local store."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ..store.images import ImageStore
from ..store.maintenance import check_blobs
from ._shared import add_format_option, add_store_option, print_json, run_command


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "fsck",
        help="re-verify every blob of the local store",
        description=(
            "Hash every blob and compare it with its name; list corrupt blobs and referenced blobs "
            "that are missing. Exit 0 when all is well, 1 otherwise. With --delete corrupt blobs are "
            "removed, so that pulling the image again restores them."
        ),
    )
    parser.add_argument("--delete", action="store_true", help="remove corrupt blobs")
    add_format_option(parser)
    add_store_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        with ImageStore(args.store) as store:
            report = await asyncio.to_thread(check_blobs, store.layout, delete=args.delete)
        if args.format == "json":
            print_json(
                {
                    "checked": report.checked,
                    "corrupt": [{"digest": d, "problem": p} for d, p in report.corrupt],
                    "missing": report.missing,
                    "removed": report.removed,
                }
            )
        else:
            for digest, problem in report.corrupt:
                removed = " (removed)" if digest in report.removed else ""
                print(f"corrupt: {digest}: {problem}{removed}")
            for digest in report.missing:
                print(f"missing: {digest}")
            print(
                f"checked {report.checked} blobs: {len(report.corrupt)} corrupt, "
                f"{len(report.missing)} missing, {len(report.removed)} removed"
            )
        return 0 if report.ok else 1

    return run_command("fsck", work())
