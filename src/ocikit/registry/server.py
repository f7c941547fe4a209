"""Running the registry on Granian, in one or several worker processes.

The parent checks everything that can fail before any worker starts (the root, the storage,
the access control, the address) and raises :class:`StartupError` with one line that says what
is wrong. It binds the listening socket itself and hands it to the workers, which inherit it.
Workers import :func:`app_from_environment`; the parent hands them its fully resolved settings
through one environment variable so that every worker runs with exactly the settings the parent
validated.

The parent lives as long as the server and only supervises the workers, so it never imports the
application: handlers, access control (PyJWT, cryptography) and storage backends are imported
by the workers and by the forked child that checks the storage and the access control.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import json
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .logs import formatter, logging_config
from .settings import Settings

if TYPE_CHECKING:
    from .app import Registry

__all__ = ["StartupError", "app_from_environment", "serve"]

_SETTINGS_VARIABLE: Final = "OCIKIT_RESOLVED_SETTINGS"
_PARENT_VARIABLE: Final = "OCIKIT_SERVER_PID"
_PORT_VARIABLE: Final = "OCIKIT_LISTENING_PORT"
_BACKLOG: Final = 2048
_SHUTDOWN_GRACE: Final = 10  # seconds a worker has to finish its requests when stopped
_FD_RESERVE: Final = 256  # descriptors a worker keeps for files, the database and logs
_PR_SET_PDEATHSIG: Final = 1
_M_TRIM_THRESHOLD: Final = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD: Final = -3
#: Allocations from this size on are mmap'd: above the 1 MiB chunks a streamed blob passes in.
_MMAP_THRESHOLD: Final = 4 << 20

log = logging.getLogger("ocikit.registry")


class StartupError(Exception):
    """The server cannot start; the message is one line for the user."""


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    # Our own INFO lines, the libraries' warnings: botocore's "found credentials" and the like
    # would otherwise interleave with the access log (and with one-line start-up errors).
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("ocikit").setLevel(logging.INFO)


def _die_with_parent(parent: int) -> None:
    """Security decision: a worker whose main process is gone (even by ``kill -9``) is killed
    by the kernel at once, rather than serving on, unsupervised, beside a new server on the
    same port. Storage is crash-safe, so an immediate kill loses no stored data."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _return_large_buffers() -> None:
    """Large buffers (an S3 upload's 10 MiB parts, allocated for each request) come from mmap
    and go back to the kernel when freed. glibc would otherwise raise its mmap threshold to the
    size of the first such buffer freed and serve the next ones from the heap, which keeps up
    to twice that freed but not returned: a replica's memory during a long upload then wandered
    by a part or two (144 to 154 MB, measured in docs/benchmarks.md)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its own policy stands
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        # Fixing one threshold fixes the other at its default, 128 KiB: keep the heap's freed
        # top up to twice the mmap threshold, as glibc does, so that 1 MiB reads do not grow
        # and trim the heap each time.
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)


def app_from_environment() -> Registry:
    """The factory each Granian worker calls."""
    from .app import create_app
    from .idle import SilentConnections

    values = json.loads(os.environ[_SETTINGS_VARIABLE])
    values["warnings"] = tuple(values.get("warnings", ()))
    settings = Settings(**values)
    if sys.platform == "linux":
        _die_with_parent(int(os.environ[_PARENT_VARIABLE]))
        _return_large_buffers()
    _configure_logging(settings)
    app = create_app(settings)
    if sys.platform == "linux":
        port = int(os.environ[_PORT_VARIABLE])
        SilentConnections(port, settings.header_timeout, app.requests_in_progress).start()
    return app


# ------------------------------------------------------------------ start-up checks


def _prepare_root(root: str) -> None:
    try:
        os.makedirs(root, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StartupError(f"root {root} is not a directory") from None
    except OSError as exc:
        raise StartupError(f"cannot create root {root}: {exc.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise StartupError(f"root {root} is not writable by this user")


async def _open_stores(settings: Settings) -> None:
    from .storage import blob_store_for, metadata_store_for

    blobs, metadata = blob_store_for(settings), metadata_store_for(settings)
    try:
        await blobs.open()
        await metadata.open()
    finally:
        await metadata.close()
        await blobs.close()


def _check_in_child(settings: Settings) -> None:
    """Open both stores once and build the access control before any worker starts, so that bad
    credentials, an unreachable database, a schema to migrate, a root the storage cannot use or
    a bad htpasswd, policy or key end the command with one line rather than a worker's
    traceback; the generated signing key exists before several workers could race to make it.

    The check runs in a short-lived forked child: it imports the backends' and the access
    control's libraries (aiobotocore, asyncpg, PyJWT: tens of megabytes), which the main
    process, alive as long as the server and doing nothing but supervise the workers, must
    never hold."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and never returns
        os.close(read_end)
        _report_check(settings, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    if message:
        raise StartupError(message)
    if status != 0:
        raise StartupError(f"the start-up check failed ({_exit_description(status)})")


def _report_check(settings: Settings, pipe: int) -> None:
    """In the forked child: check, write the one-line failure (if any), exit."""
    # The libraries' chatter (botocore names where it found the credentials) is no part of a
    # one-line start-up failure; warnings still show.
    logging.disable(logging.INFO)
    try:
        message = _storage_failure(settings) or _access_failure(settings)
        os.write(pipe, " ".join(message.split()).encode())
    finally:
        os._exit(0)


def _storage_failure(settings: Settings) -> str:
    import sqlite3

    from .storage import SchemaError, StorageUnavailable

    try:
        asyncio.run(_open_stores(settings))
    except (StorageUnavailable, SchemaError) as exc:
        return str(exc)
    except (OSError, sqlite3.Error) as exc:
        return f"cannot open the storage in {settings.root}: {exc}"
    except Exception as exc:
        return f"cannot open the storage: {type(exc).__name__}: {exc}"
    return ""


def _access_failure(settings: Settings) -> str:
    from .auth.configure import access_from_settings

    try:
        access_from_settings(settings)
    except (OSError, ValueError) as exc:
        return f"access control: {exc}"
    except Exception as exc:
        return f"access control: {type(exc).__name__}: {exc}"
    return ""


def _exit_description(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one, as Go servers do: every connection
    is a descriptor, and the usual soft limit of 1024 would cap a worker far below its
    ``max_connections``. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def _listen(settings: Settings) -> socket.socket:
    """The listening socket, bound here so that a failure is the parent's one line.

    Security decision: no ``SO_REUSEPORT``. Granian sets it on the sockets it binds, which
    lets a second server (another ocikit, another program) bind the same port and silently
    take part of the traffic; without it the kernel refuses any second listener. Only
    ``SO_REUSEADDR`` is set, so a restart need not wait for old connections in TIME_WAIT."""
    address = f"{settings.host}:{settings.port}"
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise StartupError(_bind_failure(address, settings.port, exc)) from None
    sock.set_inheritable(True)
    return sock


def _bind_failure(address: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{address} is already in use"
    if exc.errno == errno.EACCES:
        hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if port < 1024 else ""
        return f"permission denied to listen on {address}{hint}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {address}: not an address of this machine"
    return f"cannot listen on {address}: {exc.strerror}"


# ------------------------------------------------------------------------- serving


def _tls_options(settings: Settings) -> dict[str, Any]:
    """Granian's TLS: TLS 1.2 at least (clients such as skopeo and Docker still use it), and
    with ``tls_client_ca`` every connection must show a certificate issued by that CA.
    Granian 2.8 does not pass the client's certificate to the application, so it admits a
    connection but does not name a user: users still sign in with a password or a token."""
    if not settings.tls_cert:
        return {}
    from granian.constants import SSLProtocols

    options: dict[str, Any] = {
        "ssl_cert": Path(settings.tls_cert),
        "ssl_key": Path(settings.tls_key),
        "ssl_protocol_min": SSLProtocols.tls12,
    }
    if settings.tls_client_ca:
        options |= {"ssl_ca": Path(settings.tls_client_ca), "ssl_client_verify": True}
    return options


def _granian_server(listener: socket.socket, settings: Settings, fd_limit: int) -> Any:
    """Granian on ``listener`` rather than on sockets of its own (see :func:`_listen`)."""
    from granian._granian import SocketHolder
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import MPServer

    holder: Any = SocketHolder  # (fd, is_unix_socket, backlog), which its stub omits

    class Server(MPServer):
        def _init_shared_socket(self) -> None:  # what Granian does on platforms without fork
            fd = listener.fileno()
            vars(self).update(_ssp=None, _sfd=fd, _shd=holder(fd, False, _BACKLOG), _sso=listener)

    # Granian stops accepting at ``backpressure`` connections a worker holds open; above it a
    # client would hang in the kernel's queue. Room above max_connections lets the worker
    # accept and answer 503 instead, within the descriptors it has.
    accepted = min(settings.max_connections * 2, max(fd_limit - _FD_RESERVE, 64))
    return Server(
        "ocikit.registry.server:app_from_environment",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        # uvloop: its call_soon_threadsafe, which Granian calls for every request, costs a
        # fraction of asyncio's self-pipe write (measured: 12% less CPU per manifest GET).
        loop=Loops.uvloop,
        workers=settings.workers,
        factory=True,
        log_access=False,
        log_dictconfig=logging_config(settings.log_format),
        backlog=_BACKLOG,
        backpressure=accepted,
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_timeout * 1000)),
        workers_kill_timeout=_SHUTDOWN_GRACE,
        **_tls_options(settings),
    )


def serve(settings: Settings) -> None:
    """Serve until interrupted; :class:`StartupError` when the server cannot start."""
    _configure_logging(settings)
    _prepare_root(settings.root)
    _check_in_child(settings)
    fd_limit = _raise_fd_limit()
    listener = _listen(settings)
    os.environ[_SETTINGS_VARIABLE] = json.dumps(dataclasses.asdict(settings))
    os.environ[_PARENT_VARIABLE] = str(os.getpid())
    os.environ[_PORT_VARIABLE] = str(listener.getsockname()[1])
    log.info(
        "ocikit registry on %s://%s:%d, data in %s, %d worker(s)",
        "https" if settings.tls_cert else "http",
        settings.host,
        settings.port,
        settings.root,
        settings.workers,
    )
    _granian_server(listener, settings, fd_limit).serve()
