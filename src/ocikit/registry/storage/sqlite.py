"""Registry metadata in SQLite (WAL mode): the embedded default.

The rules are :mod:`.sql`'s; this module only runs them. Writes go through one dedicated
thread with its own connection, each transaction ``BEGIN IMMEDIATE`` (so one writer at a time,
across processes too, with a generous busy timeout), and never block the event loop. Reads
are point queries on indexed keys that take microseconds and, in WAL mode, never wait for a
writer: they run inline on the event loop, which measured faster than any hop to a thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from .base import StorageUnavailable
from .sql import SQLMetadataStore, Work, run_to_completion

__all__ = ["SQLiteMetadataStore"]

T = TypeVar("T")

#: Failures of the database file rather than of a statement: answered 503, retried later.
_UNAVAILABLE: Final = ("database is locked", "disk i/o error", "unable to open", "database or disk is full")


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    # Switching a new database to WAL does not honour the busy timeout: when several worker
    # processes open a fresh root at once, one may see "database is locked"; retry briefly.
    for attempt in range(100):
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=60000")
    return connection


class _SQLiteTransaction:
    """The :class:`.sql.Transaction` seam on one connection; nothing here ever suspends."""

    dialect = "sqlite"
    for_share = ""
    for_update = ""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        return self._connection.execute(sql, args).fetchall()

    async def row(self, sql: str, *args: Any) -> Any:
        return self._connection.execute(sql, args).fetchone()

    async def run(self, sql: str, *args: Any) -> int:
        return self._connection.execute(sql, args).rowcount

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._connection.executemany(sql, rows)

    async def exclusive(self, key: str) -> None:
        """Nothing to do: a write transaction here is the only writer."""

    async def shared(self, key: str) -> None:
        """Nothing to do: a write transaction here is the only writer."""

    async def table_exists(self, name: str) -> bool:
        found = self._connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return found is not None


class SQLiteMetadataStore(SQLMetadataStore):
    """The embedded default metadata store."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path.absolute()}"
        self._reader: _SQLiteTransaction | None = None
        self._writer: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        await self._connect_writer()
        await self._write(self._prepare)
        self._reader = _SQLiteTransaction(_connect(self.path))

    async def _connect_writer(self) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocikit-sqlite")
            self._writer = await self._on_writer_thread(lambda: _connect(self.path))

    async def migrate(self) -> tuple[int, int]:
        await self._connect_writer()
        return await super().migrate()

    async def close(self) -> None:
        if self._writer is not None:
            await self._on_writer_thread(self._writer.close)
            self._writer = None
        if self._reader is not None:
            self._reader._connection.close()
            self._reader = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _on_writer_thread(self, call: Callable[[], T]) -> T:
        assert self._executor is not None, "the store is not open"
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.OperationalError as exc:
            _raise_if_unavailable(exc)
            raise

    async def _read(self, work: Work[T]) -> T:
        assert self._reader is not None, "the store is not open"
        try:
            return await work(self._reader)
        except sqlite3.OperationalError as exc:
            _raise_if_unavailable(exc)
            raise

    async def _transaction(self, work: Work[T]) -> T:
        writer = self._writer
        assert writer is not None, "the store is not open"

        def transaction() -> T:
            writer.execute("BEGIN IMMEDIATE")
            try:
                result = run_to_completion(work(_SQLiteTransaction(writer)))
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            writer.execute("COMMIT")
            return result

        return await self._on_writer_thread(transaction)


def _raise_if_unavailable(exc: sqlite3.OperationalError) -> None:
    if any(text in str(exc).lower() for text in _UNAVAILABLE):
        raise StorageUnavailable("SQLite", str(exc)) from exc
