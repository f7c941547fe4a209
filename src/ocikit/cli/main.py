"""Entry point of the ``ocikit`` command: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import (
    copy,
    create,
    fsck,
    gc,
    images,
    inspect,
    login,
    logout,
    pull,
    push,
    rm,
    rmi,
    serve,
    tag,
    validate,
)

_COMMANDS = (
    validate,
    serve,
    gc,
    copy,
    pull,
    push,
    images,
    inspect,
    tag,
    rmi,
    fsck,
    login,
    logout,
    create,
    rm,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocikit",
        description="OCI images: a registry, an image store, layer unpacking and runtime bundles.",
    )
    parser.add_argument("--version", action="version", version=f"ocikit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
