"""Closing connections that hold a worker's place without ever asking for anything.

Granian times out a request's headers only once their first byte has arrived, so a client
that connects and stays silent (or stalls inside a TLS handshake) would keep its connection,
and a place among the connections a worker accepts, for as long as it likes: enough such
clients stop the registry for everyone. Each worker therefore runs a :class:`SilentConnections`
sweep over its own sockets: a connection to the registry's port with no request in progress
whose data has not moved, in either direction, for ``header_timeout`` seconds is shut down.
The kernel's own figures (``TCP_INFO``) say when data last moved, so nothing is added to the
path of a request but a count of the requests in progress per peer.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Final

__all__ = ["Peer", "SilentConnections", "peer_of"]

Peer = tuple[str, int]

_FD_DIRECTORY: Final = "/proc/self/fd"
_TCP_ESTABLISHED: Final = 1
# struct tcp_info (linux/tcp.h): tcpi_state is its first byte; tcpi_last_data_sent,
# tcpi_last_ack_sent and tcpi_last_data_recv (milliseconds) are the u32s at offset 44.
_TCP_INFO_LENGTH: Final = 64
_LAST_DATA: Final = struct.Struct("=I4xI")
_LAST_DATA_OFFSET: Final = 44
_MAPPED_IPV4: Final = "::ffff:"

log = logging.getLogger("ocikit.registry")


def peer_of(address: str, port: int | str) -> Peer:
    """One spelling of a peer for the application's scope and the kernel alike: an IPv4
    client of a dual-stack socket is named by its IPv4 address, and the port is a number
    (Granian's scope gives it as a string)."""
    if address.startswith(_MAPPED_IPV4) and "." in address:
        address = address[len(_MAPPED_IPV4) :]
    return address, int(port)


class SilentConnections:
    """The sweep of one worker's connections; see the module's docstring.

    ``busy`` counts the requests in progress per peer; the application keeps it. A request in
    progress is never cut, however quiet: its own timeouts (the body timeout) govern it."""

    def __init__(self, port: int, timeout: float, busy: Mapping[Peer, int]) -> None:
        self._port = port
        self._timeout_ms = timeout * 1000
        self._busy = busy
        self.interval = min(max(timeout / 4, 0.25), 5.0)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="ocikit-silent-connections", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                closed = self.sweep()
            except Exception:  # the sweep must outlive whatever one pass meets
                log.exception("the sweep of silent connections failed")
                continue
            if closed:
                log.info("closed %d connection(s) silent for %gs", closed, self._timeout_ms / 1000)

    def sweep(self) -> int:
        """Shut down every silent connection now; how many there were."""
        closed = 0
        for sock in _own_sockets():
            with sock:
                if self._is_silent(sock):
                    # Security decision: shutdown, not close. The descriptor stays Granian's,
                    # which sees the end of the stream and releases the connection itself;
                    # this duplicate keeps the socket inspected alive until it is shut down,
                    # so a descriptor number reused meanwhile can never be cut by mistake.
                    sock.shutdown(socket.SHUT_RDWR)
                    closed += 1
        return closed

    def _is_silent(self, sock: socket.socket) -> bool:
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return False
            if sock.getsockname()[1] != self._port:
                return False  # a connection this worker opened: the database, the object store
            address, port = sock.getpeername()[:2]
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
        except OSError:
            return False
        if len(info) < _TCP_INFO_LENGTH or info[0] != _TCP_ESTABLISHED:
            return False
        last_sent, last_received = _LAST_DATA.unpack_from(info, _LAST_DATA_OFFSET)
        if min(last_sent, last_received) < self._timeout_ms:
            return False
        return not self._busy.get(peer_of(address, port))


def _own_sockets() -> Iterator[socket.socket]:
    """A duplicate of each TCP socket this process holds, for the caller to close."""
    for name in os.listdir(_FD_DIRECTORY):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            duplicate = os.dup(int(name))
        except OSError:  # closed since the listing
            continue
        try:
            sock = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)
            continue
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            yield sock
        else:
            sock.close()
