"""A bounded memory of recent answers, each good for a limited time.

What a replica may remember is its own business (a signed URL, a link PostgreSQL promised to
announce the removal of); how much and for how long is this module's: a fixed number of
entries, the least recently asked for going first, each dropped once older than its reader
allows.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Recent"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """At most ``capacity`` values, each with the monotonic time it was kept."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._values: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, max_age: float) -> V | None:
        """The value kept for ``key`` less than ``max_age`` seconds ago, else None."""
        kept = self._values.get(key)
        if kept is None:
            return None
        if time.monotonic() - kept[1] >= max_age:
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return kept[0]

    def put(self, key: K, value: V, since: float | None = None) -> None:
        """Keep ``value`` as of ``since`` (monotonic seconds; now when None)."""
        self._values[key] = (value, time.monotonic() if since is None else since)
        self._values.move_to_end(key)
        if len(self._values) > self._capacity:
            self._values.popitem(last=False)

    def clear(self) -> None:
        self._values.clear()
