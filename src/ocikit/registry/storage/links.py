"""Blob links a PostgreSQL replica remembers, for as long as it hears of their removal.

Every blob GET asks whether its repository links the blob. Asking PostgreSQL each time costs
a pull one round trip, and PostgreSQL is the one thing all replicas share. A link is only
ever added or removed, never changed (a blob's size is its content's), and PostgreSQL's
triggers (schema version 3) send a NOTIFY on :data:`.schema.LINKS_CHANNEL` with every
transaction that removes or alters links, whoever runs it; a replica that hears one forgets
every link it remembered. A remembered link is therefore out of date for no longer than a
notification takes to arrive.

While the listening connection is down the replica remembers nothing and asks PostgreSQL, as
a removal in that time would go unheard; a connection that dies without a word (a network
partition) is noticed by a probe within two :data:`_PROBE` periods. A link is remembered for
:data:`_KEEP_FOR` seconds at most, for what no notification reaches (a connection pooler in
transaction mode, which drops them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final

from .recent import Recent
from .schema import LINKS_CHANNEL

__all__ = ["LISTENER_NAME", "LinkCache"]

log = logging.getLogger("ocikit.registry")

#: The listening connection's ``application_name``, as ``pg_stat_activity`` shows it.
LISTENER_NAME: Final = "ocikit link listener"
#: Links remembered at most (the least recently asked for go first): a few megabytes.
_CAPACITY: Final = 65536
_KEEP_FOR: Final = 60.0
#: Seconds between probes of the listening connection, and between attempts to reconnect it.
_PROBE: Final = 1.0
_SUBSCRIBE_TIMEOUT: Final = 10.0


class LinkCache:
    """(repository, digest) → size of links read from PostgreSQL, kept while listening."""

    def __init__(self, connect: Callable[[], Awaitable[Any]]) -> None:
        self._connect = connect
        self._sizes: Recent[tuple[str, str], int] = Recent(_CAPACITY)
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
        return self._sizes.get((repository, digest), _KEEP_FOR)

    def remember(self, repository: str, digest: str, size: int, generation: int) -> None:
        """Keep a size read while :attr:`generation` was ``generation``."""
        if self._listening and generation == self.generation:
            self._sizes.put((repository, digest), size)

    def _forget(self) -> None:
        self._sizes.clear()
        self.generation += 1

    def _set_listening(self, listening: bool) -> None:
        self._listening = listening
        self._forget()

    async def _subscribed(self) -> Any:
        """A new connection listening on the channel; links are remembered while it lives."""
        connection = await self._connect()
        try:
            connection.add_termination_listener(lambda _: self._set_listening(False))
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
                await connection.add_listener(LINKS_CHANNEL, lambda *_: self._forget())
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
            log.info("PostgreSQL: told of link removals again")

    async def _resubscribed(self) -> Any:
        while True:
            await asyncio.sleep(_PROBE)
            with suppress(Exception):
                return await self._subscribed()
