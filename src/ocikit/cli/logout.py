"""``ocikit logout``: forget the stored credentials of a registry."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..client.credentials import CredentialError, login_auth_file, remove_credentials
from ..spec.reference import ReferenceError
from .registry_host import registry_host


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "logout",
        help="remove a registry's stored credentials",
        description=(
            "Remove HOST's credentials from the file ocikit login writes (or from its credential helper)."
        ),
    )
    parser.add_argument("host", metavar="HOST", help="registry host[:port]")
    parser.add_argument(
        "--authfile", metavar="FILE", help="the credentials file (default: as for ocikit login)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        host = registry_host(args.host)
    except ReferenceError as exc:
        print(f"ocikit logout: {exc}", file=sys.stderr)
        return 2
    path = login_auth_file(args.authfile)
    try:
        removed = remove_credentials(path, host)
    except CredentialError as exc:
        print(f"ocikit logout: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"ocikit logout: not logged in to {host} (in {path})", file=sys.stderr)
        return 1
    print(f"Removed login credentials for {host}")
    return 0
