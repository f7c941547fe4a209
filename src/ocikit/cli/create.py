"""``ocikit create IMAGE BUNDLE``: an image into an OCI runtime bundle that runc can run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any, BinaryIO

from ..bundle import BundleError, Overrides, check_convertible, create_bundle, hostname_for
from ..bundle.lxc import UNPASSABLE, create_lxc
from ..bundle.unpack import snapshot_root, unpack_image
from ..client.transports import TransportSpec, copy_between, parse_transport
from ..layers import ApplyOptions, ApplyReport, LayerError
from ..snapshot import SnapshotError, Snapshotter, open_snapshotter
from ..spec import VerificationError, host_platform
from ..store.images import ImageStore, StoredImage, StoredLayer
from ..store.layout import OCILayout
from ..store.transport import NotFound, TransportError
from ._shared import add_store_option, parse_platform_option, run_command
from .copy import LOCATIONS

#: Failures of this command that are the input's or the system's, reported in one line.
_ERRORS = (BundleError, LayerError, SnapshotError)


def default_snapshotter() -> str:
    """overlay for root (a second container costs one mount), dir otherwise (works rootless)."""
    return "overlay" if os.geteuid() == 0 else "dir"


def add_snapshotter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--snapshotter",
        default=None,
        help="dir, overlay or zfs (default: overlay as root, dir otherwise)",
    )
    parser.add_argument(
        "--snapshots",
        metavar="DIR",
        help="snapshotter state [env OCIKIT_SNAPSHOTS, default ~/.local/share/ocikit/snapshots]",
    )
    parser.add_argument(
        "--zfs-dataset",
        metavar="POOL/PATH",
        help="the parent dataset of the zfs snapshotter [env OCIKIT_ZFS_DATASET; remembered after first use]",
    )


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "create",
        usage="ocikit create [OPTIONS] IMAGE BUNDLE [ARG...]",
        help="make an OCI runtime bundle (rootfs + config.json) or an LXC container from an image",
        description=(
            "Unpack IMAGE into snapshots (one per layer, shared between images by ChainID) and write "
            "BUNDLE: rootfs/, a writable snapshot over the image's layers, and config.json converted "
            "from the image's config. Run it with `runc run -b BUNDLE ID`; remove it with "
            "`ocikit rm BUNDLE`. IMAGE not yet in the local store is copied there first. Options go "
            "before IMAGE: everything after BUNDLE is the container's command. " + LOCATIONS
        ),
    )
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("bundle", metavar="BUNDLE")
    command_args = parser.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARG", help="replace the image's Cmd"
    )
    command_args.required = False  # argparse counts a REMAINDER as required; no ARG keeps the image's Cmd
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="from an index (default: this host)")
    parser.add_argument("--entrypoint", metavar="PROGRAM", help="replace Entrypoint (drops Cmd)")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE", help="set a var")
    parser.add_argument("-w", "--workdir", metavar="DIR", help="replace the working directory")
    parser.add_argument("-u", "--user", metavar="USER[:GROUP]", help="resolved in the image's /etc/passwd")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a terminal (process.terminal)")
    parser.add_argument(
        "--hostname", help="the container's hostname (ocikit; for lxc: made from the directory's name)"
    )
    parser.add_argument("--read-only", action="store_true", help="read-only rootfs in the container")
    parser.add_argument(
        "--volumes", choices=("bind", "tmpfs", "none"), default="bind", help="how image Volumes are mounted"
    )
    parser.add_argument(
        "--format",
        choices=("oci", "lxc"),
        default="oci",
        help="oci: a runtime bundle (config.json); lxc: an LXC container directory (config) for "
        "lxc-execute -n NAME -P PARENT, where BUNDLE is PARENT/NAME",
    )
    add_snapshotter_options(parser)
    add_store_option(parser)
    parser.set_defaults(run=run)


def open_chosen_snapshotter(args: argparse.Namespace) -> Snapshotter:
    name = args.snapshotter or default_snapshotter()
    options = {"zfs_dataset": args.zfs_dataset} if getattr(args, "zfs_dataset", None) else {}
    return open_snapshotter(name, snapshot_root(name, args.snapshots), **options)


async def stored_image(spec: TransportSpec, args: argparse.Namespace) -> StoredImage:
    """The image from the local store, copied in first when it lives elsewhere: a registry's
    image is named as ``ocikit pull`` names it, a layout's or archive's is kept by digest."""
    platform = parse_platform_option(args.platform)
    reference = spec.reference or "latest"
    if spec.kind != "store":
        name = str(spec.image) if spec.kind == "docker" and spec.image is not None else None
        into = TransportSpec("store", "", name, name or "the local store", spec.image)
        result = await copy_between(spec, into, platform=platform or host_platform(), store=args.store)
        reference = result.descriptor.digest
    with ImageStore(args.store) as store:
        return store.image(reference, platform)


async def _unpacked_while_stored(
    spec: TransportSpec, args: argparse.Namespace, snapshotter: Snapshotter, overrides: Overrides
) -> tuple[StoredImage, str | None]:
    """The image in the store and its unpacked ChainID. From an image layout (``oci:DIR``) the
    layers are applied straight from the layout while another thread copies the image into the
    store, so that a first create pays for the slower of the two instead of both; elsewhere,
    and when the layout's image cannot be read ahead, the image is stored first and unpacked
    from there (the store's copy then reports what is wrong). Either way an image that cannot
    become a bundle (:func:`check_convertible`) is refused before any layer is applied."""
    early: str | None = None
    if spec.kind == "oci":
        copying = asyncio.create_task(asyncio.to_thread(asyncio.run, stored_image(spec, args)))
        try:
            early = await _unpack_from_layout(spec, args, snapshotter, overrides)
        except Exception:
            await asyncio.wait([copying])
            if copying.exception() is None:
                raise
            # The copy verifies every blob before anything uses it: its error says best what
            # is wrong with the image (a digest mismatch rather than what the bytes made of it).
        image = await copying
    else:
        image = await stored_image(spec, args)
    if early is not None and early == str(image.chain_id):
        return image, early
    check_convertible(image.config.value, overrides)
    return image, unpack_image(image, snapshotter, ApplyOptions(), on_layer=_report)


async def _unpack_from_layout(
    spec: TransportSpec, args: argparse.Namespace, snapshotter: Snapshotter, overrides: Overrides
) -> str | None:
    """Apply the layers of the layout's image (as :func:`stored_image` chooses it) into
    snapshots; None when the image cannot be read from the layout here. Blobs are opened through
    the layout's checks, never by path, and each layer is verified as it is applied, as from
    the store."""
    try:
        layout = OCILayout.open(spec.location)
    except TransportError:
        return None
    with contextlib.closing(layout):
        try:
            top = await layout.source().resolve(spec.reference)
            image = ImageStore.reading(layout).image_of(top, parse_platform_option(args.platform))
        except (TransportError, VerificationError, ValueError):
            return None
        check_convertible(image.config.value, overrides)

        def open_layer(layer: StoredLayer) -> BinaryIO:
            blob = layout.locate(layer.descriptor.digest)
            if blob is None:
                raise NotFound(f"{spec.location}: blob {layer.descriptor.digest} is missing")
            fd, blob.fd = blob.fd, -1
            return os.fdopen(fd, "rb")

        return unpack_image(image, snapshotter, ApplyOptions(), on_layer=_report, open_layer=open_layer)


def _report(layer: StoredLayer, report: ApplyReport | None) -> None:
    what = "cached" if report is None else f"applied {report.entries} entries"
    print(f"layer {layer.diff_id.encoded[:12]}: {what}", file=sys.stderr)
    for warning in report.warnings if report else ():
        print(f"  warning: {warning}", file=sys.stderr)


def _default_hostname(args: argparse.Namespace) -> str:
    if args.format == "lxc":
        return hostname_for(os.path.basename(os.path.abspath(args.bundle)))
    return "ocikit"


def overrides_from(args: argparse.Namespace) -> Overrides:
    return Overrides(
        entrypoint=[args.entrypoint] if args.entrypoint else None,
        args=args.args or None,
        env=args.env,
        workdir=args.workdir,
        user=args.user,
        tty=args.tty,
        hostname=args.hostname or _default_hostname(args),
        readonly_rootfs=args.read_only,
        volumes=args.volumes,
    )


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        snapshotter = open_chosen_snapshotter(args)
        try:
            image, chain = await _unpacked_while_stored(
                parse_transport(args.image), args, snapshotter, overrides_from(args)
            )
            if args.format == "lxc":
                text = create_lxc(args.bundle, image.config.value, snapshotter, chain, overrides_from(args))
                if UNPASSABLE in text:
                    print(
                        "ocikit create: warning: lxc-start cannot pass empty arguments or arguments "
                        "with spaces; run this container with lxc-execute",
                        file=sys.stderr,
                    )
            else:
                create_bundle(
                    args.bundle,
                    image.config.value,
                    snapshotter,
                    chain,
                    overrides_from(args),
                    image_name=image.name,
                    manifest=image.descriptor,
                )
        except _ERRORS as exc:
            print(f"ocikit create: {exc}", file=sys.stderr)
            return 1
        finally:
            snapshotter.close()
        print(os.path.abspath(args.bundle))
        return 0

    return run_command("create", work())
