"""A small HTTP/1.1 client on asyncio streams: keep-alive pool, streamed bodies, constant memory.

Why not httpx: on loopback, streaming a 256 MiB blob through httpx's async API ran at a third of
what plain asyncio streams reach (``bench/client_transfer.py`` measures both beside skopeo), and a
registry client only needs a sliver of HTTP: one request per connection at a time, bodies framed
by Content-Length or chunked, no cookies, no HTTP/2. Redirects, auth and retries live one layer
up (:mod:`ocikit.client.session`), where the rules about ``Authorization`` are known.

Memory stays constant: response bodies are read in bounded pieces and the stream reader pauses
the socket when its buffer fills; request bodies are written chunk by chunk with ``drain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from typing import Final

import msgspec

from ..spec.numbers import decimal, hexadecimal
from ..store.transport import TransportError

__all__ = ["ConnectionFailed", "Headers", "HttpClient", "IncompleteBody", "Origin", "Response"]

#: Size of one read from the socket and of the stream reader's buffer (it pauses at twice this).
READ_SIZE: Final = 1 << 20
_MAX_IDLE_PER_ORIGIN: Final = 8
#: Leftover response bodies up to this size are drained so the connection can be reused.
_DRAIN_LIMIT: Final = 256 * 1024
_NO_BODY_STATUS: Final = frozenset({204, 304})
#: Pooled connections idle longer than this are assumed closed by the server (nginx: 75 s).
_MAX_IDLE: Final = 60.0
#: A request whose streamed body cannot be replayed only takes a connection this fresh.
_STREAM_MAX_IDLE: Final = 2.0


class ConnectionFailed(TransportError):
    """The connection could not be made, or broke before a complete response head arrived.
    ``retryable`` is False where trying again cannot help (an untrusted certificate)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class IncompleteBody(TransportError):
    """The connection ended before the announced body was complete; ``received`` says how far."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received


class Origin(msgspec.Struct, frozen=True):
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> tuple[Origin, str]:
        """The origin of an absolute URL and its request target (path and query)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port), target

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Headers:
    """Response headers, names lower-cased, repeated names kept in order."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_list(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._items if key == name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class _Connection:
    __slots__ = ("idle_since", "origin", "reader", "writer")

    def __init__(self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def reusable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and not self.reader._buffer  # type: ignore[attr-defined]

    def close(self) -> None:
        self.writer.close()


class Response:
    """A response whose body has not been read yet. Read it with :meth:`iter_bytes` or
    :meth:`read`, or drop it with :meth:`aclose`; either returns the connection to the pool."""

    def __init__(
        self,
        client: HttpClient,
        connection: _Connection,
        method: str,
        url: str,
        status: int,
        reason: str,
        headers: Headers,
        keep_alive: bool,
    ) -> None:
        self._client = client
        self._connection: _Connection | None = connection
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self._keep_alive = keep_alive
        self._chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
        length = headers.get("content-length")
        self.content_length: int | None = None
        if length is not None and not self._chunked:
            self.content_length = decimal(length.strip())
            if self.content_length is None:  # int() would also take "+1", "1_000" and "١٢"
                raise TransportError(f"{url}: invalid Content-Length {length[:40]!r}")
        self._no_body = method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200
        self._consumed = False

    async def iter_bytes(self) -> AsyncGenerator[bytes, None]:
        """The body in chunks of at most :data:`READ_SIZE` bytes."""
        if self._consumed:
            raise TransportError(f"{self.url}: the response body was already read")
        self._consumed = True
        connection = self._connection
        assert connection is not None
        reader = connection.reader
        timeout = self._client.read_timeout
        complete = False
        try:
            if self._no_body:
                complete = True
                return
            if self._chunked:
                async for chunk in _read_chunked(reader, timeout, self.url):
                    yield chunk
            elif self.content_length is not None:
                remaining = self.content_length
                while remaining:
                    async with asyncio.timeout(timeout):
                        chunk = await reader.read(min(READ_SIZE, remaining))
                    if not chunk:
                        raise IncompleteBody(
                            f"{self.url}: the connection closed after {self.content_length - remaining} "
                            f"of {self.content_length} bytes",
                            self.content_length - remaining,
                        )
                    remaining -= len(chunk)
                    yield chunk
            else:
                self._keep_alive = False  # the body runs until the server closes
                while True:
                    async with asyncio.timeout(timeout):
                        chunk = await reader.read(READ_SIZE)
                    if not chunk:
                        break
                    yield chunk
            complete = True
        except asyncio.IncompleteReadError as exc:
            raise IncompleteBody(f"{self.url}: the connection closed inside the body", 0) from exc
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise TransportError(f"{self.url}: malformed chunked body: {exc}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise IncompleteBody(
                f"{self.url}: the connection broke while reading the body: {exc}", 0
            ) from exc
        except TimeoutError:
            raise IncompleteBody(f"{self.url}: no data for {timeout:g}s while reading the body", 0) from None
        finally:
            self._release(reuse=complete)

    async def read(self, limit: int) -> bytes:
        """The whole body, refusing one longer than ``limit`` bytes (a registry may be hostile)."""
        if self.content_length is not None and self.content_length > limit and not self._no_body:
            await self.aclose()
            raise TransportError(
                f"{self.url}: the response is {self.content_length} bytes, more than {limit}"
            )
        parts: list[bytes] = []
        size = 0
        body = self.iter_bytes()
        try:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise TransportError(f"{self.url}: the response is longer than {limit} bytes")
                parts.append(chunk)
        finally:
            await body.aclose()
        return b"".join(parts)

    async def aclose(self) -> None:
        """Drop the body: small leftovers are drained so the connection is reused."""
        if self._connection is None:
            return
        if self._consumed:
            self._release(reuse=False)
            return
        small = self.content_length is not None and self.content_length <= _DRAIN_LIMIT
        if self._no_body or small:
            with contextlib.suppress(TransportError):
                await self.read(_DRAIN_LIMIT)
        self._release(reuse=False)

    def _release(self, *, reuse: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if reuse and self._keep_alive:
            self._client._put_back(connection)
        else:
            connection.close()


async def _read_chunked(reader: asyncio.StreamReader, timeout: float, url: str) -> AsyncIterator[bytes]:
    received = 0
    while True:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        if not line.endswith(b"\n"):
            raise IncompleteBody(f"{url}: the connection closed inside a chunked body", received)
        size = hexadecimal(line.split(b";", 1)[0].strip())
        if size is None:  # "-1" would read the rest of the connection into memory
            raise TransportError(f"{url}: malformed chunk size line {line[:40]!r}")
        if size == 0:
            while True:  # trailer fields, then the final empty line
                async with asyncio.timeout(timeout):
                    trailer = await reader.readline()
                if trailer in (b"\r\n", b"\n", b""):
                    return
        while size:
            async with asyncio.timeout(timeout):
                chunk = await reader.read(min(READ_SIZE, size))
            if not chunk:
                raise IncompleteBody(f"{url}: the connection closed inside a chunked body", received)
            size -= len(chunk)
            received += len(chunk)
            yield chunk
        async with asyncio.timeout(timeout):
            await reader.readexactly(2)


RequestBody = bytes | AsyncIterable[bytes] | None


class HttpClient:
    """A pool of keep-alive connections per origin. Safe for concurrent use by many tasks."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 30.0,
        read_timeout: float = 300.0,
        user_agent: str = "ocikit",
    ) -> None:
        self._ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: RequestBody = None,
        content_length: int | None = None,
    ) -> Response:
        """Send one request and return once the response head has arrived.

        A streamed body (an async iterable) needs ``content_length``; it is sent exactly once,
        on a connection that was in use moments ago (or a new one), so that a connection the
        server has meanwhile closed is unlikely to swallow it. Requests without a streamed body
        are retried once when a reused connection turns out dead.
        """
        origin, target = Origin.of(url)
        streamed = body is not None and not isinstance(body, bytes)
        if streamed and content_length is None:
            raise ValueError("a streamed request body needs content_length")
        length = len(body) if isinstance(body, bytes) else content_length
        head = self._head(method, origin, target, headers, length)
        for attempt in (0, 1):
            max_idle = _STREAM_MAX_IDLE if streamed else _MAX_IDLE
            connection, reused = await self._connection(origin, max_idle)
            try:
                await self._send(connection, head, body, length)
                status, reason, response_headers, keep_alive = await self._read_head(connection, url)
                return Response(self, connection, method, url, status, reason, response_headers, keep_alive)
            except BaseException as exc:
                connection.close()
                if reused and not streamed and attempt == 0 and isinstance(exc, ConnectionFailed | OSError):
                    continue
                if isinstance(exc, OSError | ssl.SSLError):
                    raise ConnectionFailed(f"{method} {url}: {_describe(exc)}") from exc
                raise
        raise AssertionError("unreachable")

    def _head(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: Iterable[tuple[str, str]],
        length: int | None,
    ) -> bytes:
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {origin.host_header}",
            f"User-Agent: {self.user_agent}",
        ]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} contains a line break")  # request smuggling
            lines.append(f"{name}: {value}")
        if length is not None and (length or method in ("POST", "PUT", "PATCH")):
            lines.append(f"Content-Length: {length}")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        except UnicodeEncodeError:
            raise TransportError(f"{method} {target[:200]!r}: the request has non-ASCII characters") from None

    async def _send(
        self, connection: _Connection, head: bytes, body: RequestBody, length: int | None
    ) -> None:
        writer = connection.writer
        if body is None or isinstance(body, bytes):
            writer.write(head + body if body else head)
            await writer.drain()
            return
        writer.write(head)
        sent = 0
        async for chunk in body:
            sent += len(chunk)
            if length is not None and sent > length:
                raise TransportError(f"the request body is longer than the announced {length} bytes")
            writer.write(chunk)
            await writer.drain()
        if sent != length:
            raise TransportError(f"the request body ended after {sent} of the announced {length} bytes")

    async def _read_head(self, connection: _Connection, url: str) -> tuple[int, str, Headers, bool]:
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    raw = await connection.reader.readuntil(b"\r\n\r\n")
                    status, reason, headers, version = _parse_head(raw, url)
                    if status != 100:
                        break
        except asyncio.IncompleteReadError as exc:
            raise ConnectionFailed(f"{url}: the connection closed before a response arrived") from exc
        except asyncio.LimitOverrunError as exc:
            raise TransportError(f"{url}: the response head is too large") from exc
        except TimeoutError:
            raise TransportError(f"{url}: no response within {self.read_timeout:g}s") from None
        token = (headers.get("connection") or "").lower()
        keep_alive = "close" not in token and (version == "HTTP/1.1" or "keep-alive" in token)
        return status, reason, headers, keep_alive

    async def _connection(self, origin: Origin, max_idle: float) -> tuple[_Connection, bool]:
        if self._closed:
            raise TransportError("the HTTP client is closed")
        idle = self._idle.get(origin, [])
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.reusable() and now - connection.idle_since <= max_idle:
                return connection, True
            connection.close()
        context = self._ssl_context if origin.scheme == "https" else None
        if origin.scheme == "https" and context is None:
            context = ssl.create_default_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                    limit=READ_SIZE,
                )
        except TimeoutError:
            raise ConnectionFailed(
                f"{origin.host_header}: no connection within {self.connect_timeout:g}s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectionFailed(
                f"{origin.host_header}: TLS certificate not trusted ({exc.verify_message}); give the CA with "
                "--ca-file, or --tls-verify=false to skip verification",
                retryable=False,
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(f"{origin.scheme}://{origin.host_header}: {_describe(exc)}") from exc
        return _Connection(origin, reader, writer), False

    def _put_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        idle = self._idle.setdefault(connection.origin, [])
        if self._closed or len(idle) >= _MAX_IDLE_PER_ORIGIN or not connection.reusable():
            connection.close()
        else:
            idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


def _parse_head(raw: bytes, url: str) -> tuple[int, str, Headers, str]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    status = decimal(code, 3)
    if not version.startswith("HTTP/1.") or len(code) != 3 or status is None:
        raise TransportError(f"{url}: not an HTTP/1.x response: {lines[0][:80]!r}")
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise TransportError(f"{url}: malformed response header line {line[:80]!r}")
        items.append((name.strip().lower(), value.strip()))
    return status, reason, Headers(items), version


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    return str(exc) or type(exc).__name__
