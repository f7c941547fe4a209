"""Entry point of the ``ocikit`` command: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__

#: Each command is the module of its name in this package, listed by ``--help`` in this order.
_COMMANDS = (
    "validate",
    "serve",
    "gc",
    "copy",
    "pull",
    "push",
    "images",
    "inspect",
    "tag",
    "rmi",
    "fsck",
    "create",
    "rm",
)


def _wanted(argv: Sequence[str]) -> Sequence[str]:
    """The commands to load: only the one being run, since importing every command's
    dependencies is most of the start-up time that a cached ``ocikit create`` costs; all of
    them when there is none (``--help``, a typo) so that argparse can list them."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return [first] if first in _COMMANDS else _COMMANDS


def build_parser(commands_to_load: Sequence[str] = _COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocikit",
        description="OCI images: a registry, an image store, layer unpacking and runtime bundles.",
    )
    parser.add_argument("--version", action="version", version=f"ocikit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands_to_load:
        importlib.import_module(f"{__package__}.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_wanted(argv))
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
