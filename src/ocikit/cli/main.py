"""Entry point of the ``ocikit`` command: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Final

from .. import __version__

#: Each command is the module of this package with its name, listed in the order of ``--help``.
COMMANDS: Final = (
    "validate",
    "serve",
    "migrate",
    "gc",
    "copy",
    "pull",
    "push",
    "images",
    "inspect",
    "tag",
    "rmi",
    "fsck",
    "login",
    "logout",
    "create",
    "rm",
    "export",
    "diff",
    "commit",
    "squash",
    "config",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with ``only`` that one: a command then imports just
    what it needs, which keeps the start-up of short commands (``ocikit copy``) short."""
    parser = argparse.ArgumentParser(
        prog="ocikit",
        description="OCI images: a registry, an image store, layer unpacking and runtime bundles.",
    )
    parser.add_argument("--version", action="version", version=f"ocikit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only in COMMANDS else COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments[0] if arguments else None)
    args = parser.parse_args(arguments)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
