"""``ocikit login``: check credentials against a registry, then store them where podman and
skopeo will find them too."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

import msgspec

from ..client import (
    ClientOptions,
    OptionsError,
    RegistryClient,
    add_client_arguments,
    client_options_from_args,
)
from ..client.credentials import CredentialError, login_auth_file, store_credentials
from ..spec.reference import ReferenceError
from ..store.transport import TransportError
from .registry_host import registry_host


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "login",
        help="log in to a registry and store the credentials",
        description=(
            "Verify USER's password against HOST, then store the credentials in --authfile, else "
            "$REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json, else "
            "~/.config/containers/auth.json (where podman and skopeo look), or in the credential "
            "helper that file's credHelpers names for HOST."
        ),
    )
    parser.add_argument("host", metavar="HOST", help="registry host[:port], e.g. ghcr.io or localhost:5000")
    parser.add_argument("-u", "--username", help="user name (asked for on a terminal when omitted)")
    parser.add_argument(
        "-p", "--password", help="password (visible to other users of this machine: prefer stdin)"
    )
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add_client_arguments(parser)
    parser.set_defaults(run=run)


def _fail(message: str, code: int = 1) -> int:
    print(f"ocikit login: {message}", file=sys.stderr)
    return code


def _ask(args: argparse.Namespace) -> tuple[str, str]:
    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise OptionsError("give the user name with -u USER")
        username = input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise OptionsError("no password: use --password-stdin to read it from standard input")
    if not username or not password:
        raise OptionsError("the user name and the password must not be empty")
    return username, password


def run(args: argparse.Namespace) -> int:
    try:
        host = registry_host(args.host)
        username, password = _ask(args)
        # The credentials being checked, whatever --creds or stored ones say.
        options = msgspec.structs.replace(client_options_from_args(args), credentials=(username, password))
    except (OptionsError, ReferenceError) as exc:
        return _fail(str(exc), 2)
    try:
        asked = asyncio.run(_verify(host, options))
        where = store_credentials(login_auth_file(args.authfile), host, username, password)
    except (TransportError, OptionsError, CredentialError) as exc:
        return _fail(str(exc))
    if not asked:
        print(f"note: {host} did not ask for credentials; stored them anyway", file=sys.stderr)
    print(f"Login Succeeded (credentials stored in {where})")
    return 0


async def _verify(host: str, options: ClientOptions) -> bool:
    client = RegistryClient(host, options)
    try:
        return await client.check_login()
    finally:
        await client.aclose()
