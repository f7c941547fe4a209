"""A thin request/response layer over raw ASGI.

The registry speaks a small, fixed protocol, so a framework would add per-request cost and
no capability: these helpers read headers and stream bodies in and out.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

import msgspec

from ..spec.models import enc_hook
from ..spec.numbers import decimal

_json = msgspec.json.Encoder(enc_hook=enc_hook)

__all__ = ["PEER_SCOPE_KEY", "ClientDisconnected", "Receive", "Request", "Response", "Scope", "Send"]

#: Where the connection's own peer is kept when a trusted proxy named another client
#: (``registry.proxies``); ``scope["client"]`` is then the forwarded client.
PEER_SCOPE_KEY = "ocikit.peer"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


#: The most unread body a response waits for; beyond it the connection is closed. Closing a
#: socket with unread bytes makes the kernel send a reset, and a proxy that is still sending the
#: body then loses the answer (HAProxy tells its client "server disconnected without a
#: response"): so a refused body of a plausible size — a manifest somewhat over the limit — is
#: read and dropped first (measured: milliseconds for 16 MiB), and only absurd ones are not.
DRAIN_LIMIT: Final = 16 * 1024 * 1024


class _Stalled(Exception):
    """The client sent nothing for longer than the body timeout."""


class _StallWatch:
    """The body timeout as one timer per request rather than one per read: a request body
    arrives in thousands of pieces, and arming and cancelling a timer for each (what
    ``asyncio.timeout`` does) cost more than the rest of a piece's way to storage.

    The timer, when it fires, looks whether a wait for the client has lasted the whole
    timeout; if not, it is set again for the moment the current wait (or one starting now)
    would reach it. Only then is the task cancelled, and only at the wait."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a request body is read within a task"
        self.task = task
        self.cancelling = task.cancelling()
        self.waiting_since: float | None = None
        self.fired = False
        self.timer = self.loop.call_later(limit, self._check)

    def _check(self) -> None:
        since = self.waiting_since
        due = (self.loop.time() if since is None else since) + self.limit
        if since is None or due > self.loop.time():
            self.timer = self.loop.call_at(due, self._check)
            return
        self.fired = True
        self.task.cancel()

    async def wait(self, receive: Receive) -> Message:
        self.waiting_since = self.loop.time()
        try:
            return await receive()
        except asyncio.CancelledError:
            if self.fired and self.task.uncancel() <= self.cancelling:
                raise _Stalled() from None
            raise
        finally:
            self.waiting_since = None

    def stop(self) -> None:
        self.timer.cancel()


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


class BodyTooLarge(Exception):
    """A body was longer than the caller allows."""


class Request:
    __slots__ = (
        "_body_complete",
        "_body_consumed",
        "_headers",
        "_query",
        "body_timeout",
        "method",
        "path",
        "receive",
        "scope",
        "stalled",
    )

    def __init__(self, scope: Scope, receive: Receive, body_timeout: float | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self.body_timeout = body_timeout
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self._headers: dict[str, str] | None = None
        self._query: dict[str, list[str]] | None = None
        self._body_consumed = False
        self._body_complete = False
        #: The client sent nothing of its body for longer than the body timeout.
        self.stalled = False

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ', ' as HTTP allows."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for raw_name, raw_value in self.scope["headers"]:
                name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._headers = headers
        return self._headers

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(
                self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            )
        return self._query

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def client_address(self) -> str:
        """The client's IP address ("unknown" when the server does not say), forwarded by a
        trusted proxy or the connection's own, as the audit log records it."""
        client = self.scope.get("client")
        return str(client[0]) if client else "unknown"

    @property
    def client_key(self) -> str:
        """Whom rate limits, the failed-login throttle and upload caps count a request against:
        the client's address, or for IPv6 its /64 network.

        Security decision: one IPv6 host is routinely given a whole /64, and can send each
        request from another of its addresses; counted by address, it would never be limited."""
        address = self.client_address
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv4Address):
            return address
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))

    @property
    def peer_address(self) -> str:
        """The address of the connection's other end, even when it forwarded for a client."""
        peer = self.scope.get(PEER_SCOPE_KEY) or self.scope.get("client")
        return str(peer[0]) if peer else "unknown"

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return None if value is None else decimal(value.strip())

    async def stream(self) -> AsyncIterator[bytes]:
        """The request body, chunk by chunk, in constant memory.

        Security decision: a client may pause its body for at most ``body_timeout`` seconds
        between two reads (a slow upload that keeps sending is never cut), so that connections
        that announce a body and never send it cannot pile up until the worker is full. Only
        the waits for the client count, not the time the caller spends on a chunk."""
        if self._body_consumed:
            return
        self._body_consumed = True
        watch = None if self.body_timeout is None else _StallWatch(self.body_timeout)
        try:
            while True:
                message = await self.receive() if watch is None else await watch.wait(self.receive)
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    self._body_complete = True
                    return
        except _Stalled:
            self.stalled = True
            raise ClientDisconnected(f"no body bytes for {self.body_timeout:g} s") from None
        finally:
            if watch is not None:
                watch.stop()

    async def body(self, limit: int) -> bytes:
        """The whole body, refusing one longer than ``limit``: by its Content-Length before
        reading a byte, else (chunked) as soon as it grows past the limit."""
        if (self.content_length or 0) > limit:
            raise BodyTooLarge()
        parts = bytearray()
        async for chunk in self.stream():
            parts += chunk
            if len(parts) > limit:
                raise BodyTooLarge()
        return bytes(parts)

    async def drain(self) -> bool:
        """Read and drop what remains of a small body, so the connection can be reused; False
        when the body is larger than :data:`DRAIN_LIMIT` and the connection should close."""
        if self._body_consumed:
            return self._body_complete
        if (self.content_length or 0) > DRAIN_LIMIT:
            return False
        dropped = 0
        async for chunk in self.stream():
            dropped += len(chunk)
            if dropped > DRAIN_LIMIT:
                return False
        return True


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: Stream these chunks instead of ``body`` (Content-Length must then be set by the handler).
    chunks: AsyncIterator[bytes] | None = None
    #: The Content-Length to announce for HEAD (no body is sent).
    head_length: int | None = None

    @classmethod
    def json(
        cls,
        value: Any,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Response:
        body = _json.encode(value)
        return cls(status=status, headers=[("content-type", content_type), *(headers or [])], body=body)

    def header(self, name: str, value: str) -> Response:
        self.headers.append((name, value))
        return self

    async def send(self, send: Send, *, head: bool) -> int:
        """Send the response; returns the number of body bytes sent."""
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]
        names = {n.lower() for n, _ in self.headers}
        if "content-length" not in names:
            length = self.head_length if head and self.head_length is not None else len(self.body)
            if self.chunks is None:
                headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return 0
        if self.chunks is not None:
            sent = 0
            async for chunk in self.chunks:
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return sent
        await send({"type": "http.response.body", "body": self.body})
        return len(self.body)
