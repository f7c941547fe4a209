"""What the image surgery commands (commit, squash, config) share: where the new image goes.

A new image is always written into the local store first (its layer is made there); a
``NEWREF`` elsewhere (``oci:``, ``oci-archive:``, ``docker://``) then receives a copy by the
copy engine, so every transport ocikit writes is also a surgery target.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..bundle import BundleError
from ..client.options import add_client_arguments, client_options_from_args
from ..client.transports import TransportSpec, copy_between, parse_transport
from ..layers import LayerError
from ..layers.diff import DiffReport
from ..layers.write import WrittenLayer
from ..snapshot import SnapshotError
from ..spec import Descriptor
from ..store.transport import TransportError
from ._shared import add_store_option

#: Failures of commit and squash that are the input's or the system's, reported in one line.
SURGERY_ERRORS = (BundleError, LayerError, SnapshotError)

NEWREF_HELP = (
    "where the new image goes: NAME:TAG in the local store, or oci:DIR:REF, oci-archive:FILE:REF, "
    "docker://HOST/REPO:TAG (written into the store first, then copied)"
)


def add_output_options(parser: argparse.ArgumentParser, *, layer: bool = True) -> None:
    if layer:
        parser.add_argument(
            "--compression",
            choices=("gzip", "zstd", "none"),
            default="gzip",
            help="of the new layer (gzip)",
        )
    add_store_option(parser)
    add_client_arguments(parser)


def target(text: str) -> TransportSpec:
    """``NEWREF`` parsed; refused when it names no tag (an image is found by its name)."""
    spec = parse_transport(text)
    if spec.kind == "store" and not spec.tags:
        raise TransportError(f"{text}: the new image needs a name with a tag, not a digest")
    return spec


def store_name(spec: TransportSpec) -> str | None:
    """The name the image gets in the local store: NEWREF itself when it is a store name."""
    return spec.reference if spec.kind == "store" else None


async def deliver(manifest: Descriptor, spec: TransportSpec, args: argparse.Namespace) -> None:
    """Copy the new image from the store to ``spec`` unless it is the store, then print its digest."""
    if spec.kind != "store":
        source = TransportSpec("store", "", manifest.digest, manifest.digest)
        options: dict[str, Any] = {"client_options": client_options_from_args(args)}
        await copy_between(source, spec, store=args.store, **options)
    print(manifest.digest)


async def publish(
    command: str,
    result: tuple[Descriptor, WrittenLayer, DiffReport],
    spec: TransportSpec,
    args: argparse.Namespace,
) -> int:
    """Report the new layer (and what could not go into it), then deliver the image."""
    manifest, layer, report = result
    for warning in report.warnings:
        print(f"ocikit {command}: warning: {warning}", file=sys.stderr)
    size = f"{layer.entries} entries, {layer.descriptor.size} bytes"
    print(f"layer {layer.diff_id.encoded[:12]}: {size}", file=sys.stderr)
    await deliver(manifest, spec, args)
    return 0
