"""Blob links a PostgreSQL replica remembers, for as long as it hears of their removal.

Every blob GET asks whether its repository links the blob. Asking PostgreSQL each time costs
a pull one round trip, and PostgreSQL is the one thing all replicas share. A link is only
ever added or removed, never changed (a blob's size is its content's), and every transaction
that removes links sends a NOTIFY on :data:`CHANNEL` as it commits (:mod:`.sql`); a replica
that hears one forgets every link it remembered. A remembered link is therefore out of date
for no longer than a notification takes to arrive. While the listening connection is down
the replica remembers nothing and asks PostgreSQL, since a removal in that time would go
unheard; a connection that dies without a word (a network partition) is noticed by a probe
within :data:`_PROBE` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final

__all__ = ["CHANNEL", "LISTENER_NAME", "LinkCache"]

log = logging.getLogger("ocikit.registry")

CHANNEL: Final = "ocikit_links_removed"
#: The listening connection's ``application_name``, as ``pg_stat_activity`` shows it.
LISTENER_NAME: Final = "ocikit link listener"
#: Links remembered at most (the oldest go first): a few megabytes.
_CAPACITY: Final = 65536
#: Seconds between probes of the listening connection, and between attempts to reconnect it.
_PROBE: Final = 1.0


class LinkCache:
    """(repository, digest) → size of links read from PostgreSQL, kept while listening."""

    def __init__(self, connect: Callable[[], Awaitable[Any]]) -> None:
        self._connect = connect
        self._sizes: dict[tuple[str, str], int] = {}
        self._listening = False
        #: Counts the times everything was forgotten: a read that began before the latest
        #: may have missed the removal that caused it, and is not remembered.
        self.generation = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen from now on: the first connection is made before this returns."""
        self._task = asyncio.get_running_loop().create_task(self._listen(await self._subscribed()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._set_listening(False)

    def size(self, repository: str, digest: str) -> int | None:
        return self._sizes.get((repository, digest))

    def remember(self, repository: str, digest: str, size: int, generation: int) -> None:
        """Keep a size read while :attr:`generation` was ``generation``."""
        if not self._listening or generation != self.generation:
            return
        if len(self._sizes) >= _CAPACITY:
            del self._sizes[next(iter(self._sizes))]
        self._sizes[(repository, digest)] = size

    def _forget(self) -> None:
        self._sizes.clear()
        self.generation += 1

    def _set_listening(self, listening: bool) -> None:
        self._listening = listening
        self._forget()

    async def _subscribed(self) -> Any:
        """A new connection listening on :data:`CHANNEL`; links are remembered while it lives."""
        connection = await self._connect()
        try:
            connection.add_termination_listener(lambda _: self._set_listening(False))
            await connection.add_listener(CHANNEL, lambda *_: self._forget())
        except BaseException:
            connection.terminate()
            raise
        self._set_listening(True)
        return connection

    async def _listen(self, connection: Any) -> None:
        while True:
            try:
                while True:
                    await asyncio.sleep(_PROBE)
                    await connection.fetchval("SELECT 1", timeout=_PROBE)
            except Exception as error:  # the loop outlives every connection
                log.warning("PostgreSQL: no longer told of link removals (%s); asking it every time", error)
            finally:
                connection.terminate()
                self._set_listening(False)
            connection = await self._resubscribed()

    async def _resubscribed(self) -> Any:
        while True:
            await asyncio.sleep(_PROBE)
            with suppress(Exception):
                return await self._subscribed()
