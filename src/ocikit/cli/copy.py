"""``ocikit copy SRC DST``: an image between registries, layouts, archives and the local store."""

from __future__ import annotations

import argparse
from typing import Any

from ..client.options import add_client_arguments, client_options_from_args
from ..client.transports import TransportSpec, copy_between, parse_transport
from ._shared import Progress, add_progress_options, add_store_option, parse_platform_option, run_command

LOCATIONS = (
    "Locations, in skopeo's syntax: docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:REF], "
    "oci-archive:FILE[:REF], or a bare NAME[:TAG|@DIGEST] for the local image store."
)


def add_copy_options(parser: argparse.ArgumentParser, *, two_registries: bool = False) -> None:
    """The options every command that copies shares (copy, pull, push). With
    ``two_registries`` the connection flags come twice, as ``--src-*`` and ``--dest-*``."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="copy only this platform's manifest of an index"
    )
    which.add_argument("--all", action="store_true", help="every platform of an index (the default)")
    parser.add_argument(
        "--with-referrers", action="store_true", help="bring signatures, SBOMs and other referrers along"
    )
    parser.add_argument("--jobs", type=int, default=4, metavar="N", help="parallel blob transfers (4)")
    add_progress_options(parser)
    add_store_option(parser)
    if two_registries:
        add_client_arguments(parser, "src-", "source")
        add_client_arguments(parser, "dest-", "destination")
    else:
        add_client_arguments(parser)


def _registry_options(args: argparse.Namespace) -> dict[str, Any]:
    if hasattr(args, "src_tls_verify"):
        return {
            "source_options": client_options_from_args(args, "src-"),
            "destination_options": client_options_from_args(args, "dest-"),
        }
    return {"client_options": client_options_from_args(args)}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "copy",
        help="copy an image between registries, layouts, archives and the local store",
        description=(
            "Copy SRC to DST byte for byte: manifests are never re-serialised, so digests are kept. "
            "Every platform of an index is copied unless --platform picks one, which then becomes "
            "the image at DST. " + LOCATIONS
        ),
    )
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("destination", metavar="DST")
    add_copy_options(parser, two_registries=True)
    parser.set_defaults(run=run)


async def copy_locations(source: TransportSpec, destination: TransportSpec, args: argparse.Namespace) -> int:
    """Copy with the command's options and report; shared by copy, pull and push."""
    with Progress(args) as progress:
        result = await copy_between(
            source,
            destination,
            platform=parse_platform_option(args.platform),
            with_referrers=args.with_referrers,
            concurrency=args.jobs,
            progress=progress,
            store=args.store,
            **_registry_options(args),
        )
    progress.finished(result, str(destination))
    return 0


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        return await copy_locations(parse_transport(args.source), parse_transport(args.destination), args)

    return run_command("copy", work())
