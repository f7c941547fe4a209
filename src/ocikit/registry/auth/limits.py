"""Token buckets: request rates per user and per client address, and failed logins.

Each worker process keeps its own buckets (no shared state on the hot path), so with N
workers a client gets at most N times the configured rate when its connections spread.
"""

from __future__ import annotations

import math
import time
from typing import Final

__all__ = ["LoginThrottle", "TokenBuckets"]

_MAX_KEYS: Final = 100_000


class TokenBuckets:
    """``rate`` tokens per second into buckets of ``burst`` tokens, one bucket per key."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def _level(self, key: str, now: float) -> float:
        tokens, when = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def take(self, key: str) -> float:
        """Take a token: 0 if there was one, else the seconds to wait (nothing is taken)."""
        now = time.monotonic()
        level = self._level(key, now)
        if level < 1:
            return (1 - level) / self.rate
        if len(self._buckets) >= _MAX_KEYS:
            self._prune(now)
        self._buckets[key] = (level - 1, now)
        return 0.0

    def give_back(self, key: str) -> None:
        """Return a token taken for something that turned out not to count."""
        now = time.monotonic()
        if key in self._buckets:
            self._buckets[key] = (min(self.burst, self._level(key, now) + 1), now)

    def _prune(self, now: float) -> None:
        """Forget full buckets (they behave exactly like new ones); if all are busy, all."""
        full = [k for k in self._buckets if self._level(k, now) >= self.burst]
        for key in full or list(self._buckets):
            del self._buckets[key]


class LoginThrottle:
    """After ``burst`` failed logins from one address, one more is allowed every
    ``1/rate`` seconds; until then every login from there is refused without a bcrypt.

    Security decision: a login counts as failed from the moment it starts, and is given
    back when the password proves right. Counting only after the bcrypt let every login
    already waiting for one through: a burst of parallel guesses was never throttled."""

    def __init__(self, rate: float = 0.2, burst: float = 10) -> None:
        self._failures = TokenBuckets(rate, burst)

    def attempt(self, address: str) -> int:
        """0 if a login may be tried now (it then counts as failed until :meth:`succeeded`),
        else whole seconds to wait."""
        return math.ceil(self._failures.take(address))

    def succeeded(self, address: str) -> None:
        self._failures.give_back(address)
