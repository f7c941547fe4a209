"""``ocikit export --format pve-template|oci-archive IMAGE FILE``: an image for Proxmox VE."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..bundle import BundleError
from ..bundle.pve import export_pve_template, write_pve_archive
from ..bundle.unpack import unpack_image
from ..client.transports import parse_transport
from ..layers import ApplyOptions, LayerError
from ..snapshot import SnapshotError
from ..store.images import ImageStore
from ._shared import add_store_option, run_command
from .copy import LOCATIONS
from .create import add_snapshotter_options, open_chosen_snapshotter, stored_image

_ERRORS = (BundleError, LayerError, SnapshotError)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        usage="ocikit export --format {pve-template,oci-archive} [OPTIONS] IMAGE FILE",
        help="write an image as a Proxmox VE container template or an OCI archive PVE imports",
        description=(
            "pve-template: the image's flattened root filesystem (every layer applied, whiteouts "
            "resolved) as a zstd-compressed tar with ./-relative members and numeric owners, for "
            "`pct create ID STORAGE:vztmpl/FILE.tar.zst`. oci-archive: the image (one platform) as an "
            "OCI archive with OCI media types, which Proxmox VE 9.1 imports as an application "
            "container template. IMAGE not yet in the local store is copied there first. " + LOCATIONS
        ),
    )
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--format", choices=("pve-template", "oci-archive"), required=True)
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="from an index (default: this host)")
    add_snapshotter_options(parser)
    add_store_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        image = await stored_image(parse_transport(args.image), args)
        if args.format == "oci-archive":
            try:
                with ImageStore(args.store) as store:
                    written = await write_pve_archive(store, image, args.file)
            except BundleError as exc:
                print(f"ocikit export: {exc} (--format pve-template takes any image)", file=sys.stderr)
                return 1
            if written.digest != image.descriptor.digest:
                print(
                    f"ocikit export: Docker media types written as OCI's; manifest {written.digest} "
                    f"(the image's is {image.descriptor.digest})",
                    file=sys.stderr,
                )
            print(os.path.abspath(args.file))
            return 0
        snapshotter = open_chosen_snapshotter(args)
        try:
            chain = unpack_image(image, snapshotter, ApplyOptions())
            report = export_pve_template(snapshotter, chain, args.file)
        except _ERRORS as exc:
            print(f"ocikit export: {exc}", file=sys.stderr)
            return 1
        finally:
            snapshotter.close()
        for name in report.skipped:
            print(f"ocikit export: warning: {name} is a socket; a tar cannot hold it", file=sys.stderr)
        print(os.path.abspath(args.file))
        return 0

    return run_command("export", work())
