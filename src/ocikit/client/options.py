"""How to reach registries: plain HTTP or TLS, which CAs, which credentials, and the command-line
flags that set them.

Every command that talks to a registry (copy, pull, push, login, …) takes the same flags, built
here so that they mean the same thing everywhere. ``ocikit copy`` has two registries, so the
flags can carry a prefix (``--src-creds``, ``--dest-tls-verify``) as in skopeo.
"""

from __future__ import annotations

import argparse
import ipaddress
import ssl
from pathlib import Path
from typing import Final

import msgspec

from .. import __version__

__all__ = [
    "ClientOptions",
    "OptionsError",
    "add_client_arguments",
    "client_options_from_args",
    "is_loopback",
    "parse_bool",
    "parse_creds",
]

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
#: Where docker and podman keep per-registry certificates: ``ROOT/HOST[:PORT]/``.
CERTS_D_ROOTS: Final = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


class OptionsError(ValueError):
    """A client flag has a value that cannot be used; the message is meant for the user."""


class ClientOptions(msgspec.Struct, frozen=True):
    """Connection and credential settings shared by every registry a command talks to.

    ``plain_http``: None (the default) speaks plain HTTP to loopback hosts only and TLS to
    everything else; True forces plain HTTP; False forces TLS even on loopback.
    ``credentials``: ``(user, password)`` used instead of any stored credentials.
    ``authfile``: read (and for ``login``, write) credentials there only.
    ``cert_dir``: a directory of ``*.crt`` CAs and ``*.cert``/``*.key`` client certificates used
    instead of ``/etc/containers/certs.d/HOST`` and ``/etc/docker/certs.d/HOST``.
    ``remember_blobs``: keep a record of which repositories hold which blobs, and mount from
    them on push (:mod:`ocikit.client.locations`); ``blob_locations`` is that record's file
    (default ``${XDG_CACHE_HOME:-~/.cache}/ocikit/blob-locations.sqlite``).
    """

    plain_http: bool | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    cert_dir: str | None = None
    authfile: str | None = None
    credentials: tuple[str, str] | None = None
    user_agent: str = f"ocikit/{__version__}"
    retries: int = 3
    connect_timeout: float = 30.0
    read_timeout: float = 300.0
    remember_blobs: bool = True
    blob_locations: str | None = None

    def use_tls(self, host: str) -> bool:
        """Whether to speak TLS to ``host`` (``name[:port]``)."""
        if self.plain_http is not None:
            return not self.plain_http
        return not is_loopback(host)

    def ssl_context(self, host: str | None = None) -> ssl.SSLContext:
        """The system's trust store plus ``ca_file`` and the certificate directory for ``host``;
        no verification at all with tls_verify off."""
        context = ssl.create_default_context()
        if self.ca_file:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise OptionsError(f"cannot load CA certificates from {self.ca_file}: {exc}") from exc
        for directory in self._cert_dirs(host):
            _load_cert_dir(context, directory)
        if not self.tls_verify:
            # Explicitly asked for (--tls-verify=false): traffic stays encrypted but the peer is
            # not authenticated, so credentials could reach an impostor.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _cert_dirs(self, host: str | None) -> list[Path]:
        if self.cert_dir:
            return [Path(self.cert_dir)]
        if not host:
            return []
        return [root / host for root in CERTS_D_ROOTS if (root / host).is_dir()]


def _load_cert_dir(context: ssl.SSLContext, directory: Path) -> None:
    """Docker's certs.d layout: ``*.crt`` are CAs to trust, ``NAME.cert`` + ``NAME.key`` a client
    certificate for registries that ask for one."""
    try:
        for path in sorted(directory.glob("*.crt")):
            context.load_verify_locations(cafile=str(path))
        for cert in sorted(directory.glob("*.cert")):
            key = cert.with_suffix(".key")
            if not key.is_file():
                raise OptionsError(f"{cert} has no matching {key.name}")
            context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise OptionsError(f"cannot load the certificates in {directory}: {exc}") from exc


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_creds(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (the password may contain ':'); an empty user is refused."""
    user, colon, password = text.partition(":")
    if not colon or not user:
        raise OptionsError("--creds takes USER:PASSWORD")
    return user, password


def add_client_arguments(parser: argparse.ArgumentParser, prefix: str = "", side: str = "") -> None:
    """Add ``--[PREFIX]plain-http``, ``--[PREFIX]tls-verify``, ``--[PREFIX]ca-file``,
    ``--[PREFIX]cert-dir``, ``--[PREFIX]authfile`` and ``--[PREFIX]creds``. ``prefix`` is e.g.
    ``"src-"``; ``side`` names it in the help text (``"source"``)."""
    of = f" (for the {side} registry)" if side else ""
    group = parser.add_argument_group(f"registry connection{of}")
    group.add_argument(
        f"--{prefix}plain-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="speak plain HTTP (default: only to 127.0.0.0/8, ::1 and localhost; --no-plain-http forces TLS)",
    )
    group.add_argument(
        f"--{prefix}tls-verify",
        nargs="?",
        const=True,
        default=True,
        type=parse_bool,
        metavar="BOOL",
        help="verify TLS certificates (default true; --tls-verify=false skips it)",
    )
    group.add_argument(
        f"--{prefix}insecure",
        dest=f"{prefix.replace('-', '_')}tls_verify",
        action="store_false",
        help="the same as --tls-verify=false",
    )
    group.add_argument(
        f"--{prefix}ca-file", metavar="FILE", help="also trust the CA certificates in FILE (PEM)"
    )
    group.add_argument(
        f"--{prefix}cert-dir",
        metavar="DIR",
        help="*.crt CAs and *.cert/*.key client certificates (default: /etc/containers/certs.d/HOST, "
        "/etc/docker/certs.d/HOST)",
    )
    group.add_argument(
        f"--{prefix}authfile",
        metavar="FILE",
        help="read credentials from FILE only "
        "(default: $REGISTRY_AUTH_FILE, containers auth.json, docker config)",
    )
    group.add_argument(
        f"--{prefix}creds", metavar="USER:PASSWORD", help="credentials to use instead of stored ones"
    )


def client_options_from_args(args: argparse.Namespace, prefix: str = "") -> ClientOptions:
    """The :class:`ClientOptions` that flags added by :func:`add_client_arguments` describe.
    Raises :class:`OptionsError` for a bad ``--creds``."""
    key = prefix.replace("-", "_")
    creds = getattr(args, f"{key}creds", None)
    return ClientOptions(
        plain_http=getattr(args, f"{key}plain_http", None),
        tls_verify=getattr(args, f"{key}tls_verify", True),
        ca_file=getattr(args, f"{key}ca_file", None),
        cert_dir=getattr(args, f"{key}cert_dir", None),
        authfile=getattr(args, f"{key}authfile", None),
        credentials=parse_creds(creds) if creds else None,
    )
