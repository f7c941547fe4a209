"""Registry metadata in PostgreSQL, shared by any number of replicas.

The rules are :mod:`.sql`'s; this module runs them on an asyncpg pool. Each write is one
transaction at READ COMMITTED with the row locks and transaction-scoped advisory locks that
:mod:`.sql` asks for. Connection settings come from the libpq URL (``postgresql://user@host/db``)
and, as libpq does, the password from the URL, ``PGPASSWORD`` or ``~/.pgpass``.

A database that cannot be reached (restarting, network down) raises
:class:`.base.StorageUnavailable`: the request is answered 503 and the pool reconnects on a
later one, so replicas ride out a database restart without being restarted themselves.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from ...spec.digest import Digest
from ...spec.numbers import decimal
from .base import StorageUnavailable
from .links import LISTENER_NAME, LinkCache
from .sql import SQLMetadataStore, Work

__all__ = ["PostgresMetadataStore"]

T = TypeVar("T")

_COMPONENT: Final = "PostgreSQL"
_CONNECT_TIMEOUT: Final = 10.0
_PARAMETER_MARKER: Final = re.compile(r"\?")

#: Failures of the connection, not of a statement (SQLSTATE classes 08 and 57P0x, asyncpg's own).
_CONNECTION_ERRORS: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
    asyncpg.exceptions.InvalidCatalogNameError,
)


def _numbered(sql: str, cache: dict[str, str]) -> str:
    """``?`` parameter markers as PostgreSQL's ``$1, $2, ...`` (the statements hold no literal ``?``)."""
    converted = cache.get(sql)
    if converted is None:
        counter = iter(range(1, 1 << 16))
        converted = cache[sql] = _PARAMETER_MARKER.sub(lambda _: f"${next(counter)}", sql)
    return converted


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    return decimal(status.rsplit(" ", 1)[-1]) or 0


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def _keep_session(connection: Any) -> None:
    """The pool's reset between two borrowers: nothing to undo, as the store leaves no session
    state (its advisory locks are transaction-scoped; no LISTEN, SET or cursors). asyncpg's
    default would cost a round trip to the server on every read."""


class _PostgresTransaction:
    dialect = "postgresql"
    for_share = " FOR SHARE"
    for_update = " FOR UPDATE"

    def __init__(self, connection: Any, cache: dict[str, str]) -> None:
        self._connection = connection
        self._cache = cache

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._connection.fetch(_numbered(sql, self._cache), *args))

    async def row(self, sql: str, *args: Any) -> Any:
        return await self._connection.fetchrow(_numbered(sql, self._cache), *args)

    async def run(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._connection.execute(_numbered(sql, self._cache), *args))

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        if batch:
            await self._connection.executemany(_numbered(sql, self._cache), batch)

    async def exclusive(self, key: str) -> None:
        await self._connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)

    async def shared(self, key: str) -> None:
        await self._connection.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", key)

    async def table_exists(self, name: str) -> bool:
        # The catalog read through the statement's snapshot, not to_regclass: its name cache
        # may still hold "absent" for a table another session created while this one waited
        # for the migration lock (an advisory lock does not make the backend take in catalog
        # invalidations).
        found = await self._connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables"
            " WHERE schemaname = current_schema() AND tablename = $1)",
            name,
        )
        return bool(found)


class PostgresMetadataStore(SQLMetadataStore):
    """Metadata in a PostgreSQL database that several replicas share."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self._dsn = url
        self.url = _redacted(url)
        self._pool_size = pool_size
        self._pool: Any = None
        self._cache: dict[str, str] = {}
        self._links = LinkCache(self._listening_connection)

    async def _connect(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=_CONNECT_TIMEOUT,
                reset=_keep_session,
            )
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailable(_COMPONENT, f"{self.url}: {exc}") from exc

    async def _listening_connection(self) -> Any:
        return await asyncpg.connect(
            self._dsn, timeout=_CONNECT_TIMEOUT, server_settings={"application_name": LISTENER_NAME}
        )

    async def open(self) -> None:
        await self._connect()
        try:
            await self._write(self._prepare)
            await self._listen()
        except BaseException:
            await self.close()
            raise

    async def _listen(self) -> None:
        try:
            await self._links.start()
        except (*_CONNECTION_ERRORS, asyncpg.exceptions.PostgresError) as exc:
            raise StorageUnavailable(_COMPONENT, f"{self.url}: {exc}") from exc

    async def migrate(self) -> tuple[int, int]:
        await self._connect()
        return await super().migrate()

    async def close(self) -> None:
        await self._links.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None:
        """Remembered while PostgreSQL tells of every link's removal (:mod:`.links`)."""
        size = self._links.size(repository, digest)
        if size is None:
            generation = self._links.generation
            size = await super().linked_blob_size(repository, digest)
            if size is not None:
                self._links.remember(repository, digest, size, generation)
        return size

    async def _read(self, work: Work[T]) -> T:
        assert self._pool is not None, "the store is not open"
        try:
            async with self._pool.acquire(timeout=_CONNECT_TIMEOUT) as connection:
                return await work(_PostgresTransaction(connection, self._cache))
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailable(_COMPONENT, str(exc) or type(exc).__name__) from exc

    async def _transaction(self, work: Work[T]) -> T:
        assert self._pool is not None, "the store is not open"
        try:
            async with (
                self._pool.acquire(timeout=_CONNECT_TIMEOUT) as connection,
                connection.transaction(),
            ):
                return await work(_PostgresTransaction(connection, self._cache))
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailable(_COMPONENT, str(exc) or type(exc).__name__) from exc
