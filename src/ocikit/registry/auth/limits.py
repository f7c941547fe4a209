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

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0: it has one now); takes nothing."""
        level = self._level(key, time.monotonic())
        return 0.0 if level >= 1 else (1 - level) / self.rate

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

    def _prune(self, now: float) -> None:
        """Forget full buckets (they behave exactly like new ones); if all are busy, all."""
        full = [k for k in self._buckets if self._level(k, now) >= self.burst]
        for key in full or list(self._buckets):
            del self._buckets[key]


class LoginThrottle:
    """After ``burst`` failed logins from one address, one more is allowed every
    ``1/rate`` seconds; until then every login from there is refused without a bcrypt."""

    def __init__(self, rate: float = 0.2, burst: float = 10) -> None:
        self._failures = TokenBuckets(rate, burst)

    def retry_after(self, address: str) -> int:
        """0 if a login may be tried now, else whole seconds to wait."""
        return math.ceil(self._failures.wait(address))

    def failed(self, address: str) -> None:
        self._failures.take(address)
