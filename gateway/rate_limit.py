"""A token bucket per API key: RATE_LIMIT_PER_S sustained, RATE_LIMIT_BURST at once.

Each key's bucket fills at ``rate_per_s`` tokens a second up to ``burst``; a
request takes one token. An empty bucket answers how long until the next
token, which becomes the 429's ``Retry-After``. Buckets are keyed by the key's
id, so their number is bounded by the configured keys, and one key emptying
its bucket never slows another. The clock is injected, so tests need no sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when they were counted)

    def take(self, key: str) -> float:
        """Take a token from ``key``'s bucket: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        tokens, counted = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s
