"""Rate limits and quotas that hold across every gateway process and replica.

Two stores do the same two atomic operations, a token bucket (``take``) and a quota charge (``charge``: every
quota checked, then all of them added to, or none):

* ``RedisLimits`` (``REDIS_URL`` set): two Lua scripts, each one atomic step in Redis, shared by every gateway
  that names the same Redis. Redis's own clock (``TIME``) fills the buckets, so gateways' clocks may differ.
* ``FileLimits`` (the embedded default): a small SQLite file, ``limits.sqlite3`` in ``JOBS_DIR``, whose
  ``BEGIN IMMEDIATE`` transactions let one process at a time read and write: every gateway process of one machine
  (``GATEWAY_PROCESSES``) shares it. Replicas on other machines need Redis.

``GuardedLimits`` keeps a store's outage from stopping the gateway: while the store fails, requests are judged by
the last known counts, kept in this process (fail open), for at most ``LIMITS_FAIL_OPEN_S``; past that they are
refused with 503 until the store answers again (fail closed). The store is tried again at most every
``RETRY_S`` while it is down, so a store that hangs costs one timeout per interval, not one per request.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.rate_limit import RateLimiter

log = logging.getLogger(__name__)

#: While the store is down, how often one request tries it again.
RETRY_S = 0.5
#: Longest wait for another process's transaction on the embedded file before it counts as an outage.
FILE_LOCK_TIMEOUT_S = 0.5

_TAKE_LUA = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(held[1]) or burst, tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""

_CHARGE_LUA = """
local n, count = tonumber(ARGV[1]), #KEYS
local used = {}
for i = 1, count do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n > 0 and used[i] + n > tonumber(ARGV[1 + i]) then return {i, used[i]} end
end
for i = 1, count do
  used[i] = redis.call('INCRBY', KEYS[i], n)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[1 + count + i]))
end
return {0, unpack(used)}
"""


@dataclass(frozen=True)
class Quota:
    """One quota of one key in its current period: ``counter`` names the period, ``resets_at`` ends it."""

    name: str  # rows_per_day, rows_per_month, job_rows_per_day
    limit: int
    counter: str  # <key id>:<name>:<period start>
    resets_at: float  # seconds since 1970 UTC


@dataclass(frozen=True)
class Charge:
    """A charge's outcome: ``refused`` the quota it would cross (None: charged), ``used`` per quota after it."""

    refused: Quota | None
    used: tuple[int, ...]


class LimitsUnavailable(Exception):
    """The shared store is down and the fail-open time is over."""


class LimitStore(Protocol):
    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        """Take a token of the key's bucket: 0.0, or the seconds until there is one."""

    async def charge(self, quotas: Sequence[Quota], rows: int) -> Charge:
        """Add ``rows`` to every quota unless one would go over its limit (negative ``rows``: give back)."""

    async def close(self) -> None: ...


class RedisLimits:
    def __init__(self, url: str, timeout_s: float) -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._take = self._redis.register_script(_TAKE_LUA)
        self._charge = self._redis.register_script(_CHARGE_LUA)

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        return float(await self._take(keys=[f"gw:rate:{key_id}"], args=[rate_per_s, burst]))

    async def charge(self, quotas: Sequence[Quota], rows: int) -> Charge:
        now = time.time()
        ttls = [max(1, int(quota.resets_at - now) + 3600) for quota in quotas]
        answer = await self._charge(keys=[f"gw:quota:{quota.counter}" for quota in quotas],
                                    args=[rows, *(quota.limit for quota in quotas), *ttls])
        if int(answer[0]):
            return Charge(quotas[int(answer[0]) - 1], (int(answer[1]),))
        return Charge(None, tuple(int(used) for used in answer[1:]))

    async def close(self) -> None:
        await self._redis.aclose()


class FileLimits:
    """The embedded store: one SQLite file, one connection per process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=FILE_LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # counters, not records: a power cut may lose the last ones
        self._db.execute("CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL, at REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, used INTEGER, until REAL)")

    def _run(self, work: Callable[[], Any]) -> Any:
        """``work`` in one write transaction, on the event loop's thread: each holds the file's lock for some
        microseconds, so a wait for another process's is as short, and cheaper than a hop to a thread."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        def work() -> float:
            now = time.time()
            row = self._db.execute("SELECT tokens, at FROM buckets WHERE key = ?", (key_id,)).fetchone()
            tokens, at = row if row else (float(burst), now)
            tokens = min(float(burst), tokens + max(0.0, now - at) * rate_per_s)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate_per_s
            tokens -= 1.0 if tokens >= 1.0 else 0.0
            self._db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (key_id, tokens, now))
            return wait

        return float(self._run(work))

    async def charge(self, quotas: Sequence[Quota], rows: int) -> Charge:
        def work() -> Charge:
            used = []
            for quota in quotas:
                row = self._db.execute("SELECT used FROM counters WHERE key = ?", (quota.counter,)).fetchone()
                used.append(row[0] if row else 0)
                if rows > 0 and used[-1] + rows > quota.limit:
                    return Charge(quota, (used[-1],))
            for quota, before in zip(quotas, used, strict=True):
                self._db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                                 (quota.counter, before + rows, quota.resets_at))
            self._db.execute("DELETE FROM counters WHERE until < ?", (time.time() - 86400,))
            return Charge(None, tuple(before + rows for before in used))

        result: Charge = self._run(work)
        return result

    async def close(self) -> None:
        self._db.close()


class GuardedLimits:
    """A store, and what to do while it is down: the last known counts for ``fail_open_s``, then 503."""

    def __init__(self, store: LimitStore, fail_open_s: float, on_state: Callable[[bool], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.fail_open_s = fail_open_s
        self._on_state = on_state  # called with False when an outage starts, True when it ends
        self._clock = clock
        self._down_since: float | None = None
        self._next_try = 0.0
        self._used: dict[str, int] = {}  # quota counter -> last known use, counted on here in an outage
        self._local: dict[tuple[float, int], RateLimiter] = {}

    @property
    def down(self) -> bool:
        return self._down_since is not None

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        if self._worth_trying():
            try:
                wait = await self.store.take(key_id, rate_per_s, burst)
            except Exception as exc:  # noqa: BLE001 - any failure of the store is an outage here
                self._failed(exc)
            else:
                self._up()
                return wait
        self._check_open()
        local = self._local.setdefault((rate_per_s, burst), RateLimiter(rate_per_s, burst))
        return local.take(key_id)

    async def charge(self, quotas: Sequence[Quota], rows: int) -> Charge:
        if self._worth_trying():
            try:
                charge = await self.store.charge(quotas, rows)
            except Exception as exc:  # noqa: BLE001 - any failure of the store is an outage here
                self._failed(exc)
            else:
                self._up()
                if charge.refused is None:
                    self._used.update(zip((quota.counter for quota in quotas), charge.used, strict=True))
                return charge
        if rows < 0:
            return Charge(None, ())  # nothing to give back to a store that is down
        self._check_open()
        used = [self._used.get(quota.counter, 0) for quota in quotas]
        for quota, before in zip(quotas, used, strict=True):
            if before + rows > quota.limit:
                return Charge(quota, (before,))
        for quota, before in zip(quotas, used, strict=True):
            self._used[quota.counter] = before + rows
        return Charge(None, tuple(before + rows for before in used))

    def _worth_trying(self) -> bool:
        return self._down_since is None or self._clock() >= self._next_try

    def _failed(self, exc: Exception) -> None:
        now = self._clock()
        self._next_try = now + RETRY_S
        if self._down_since is None:
            self._down_since = now
            self._on_state(False)
            log.warning("the shared limits store is unavailable (%s: %s); judging by the last known counts for "
                        "%.0f s, then refusing with 503", type(exc).__name__, str(exc)[:300], self.fail_open_s)

    def _up(self) -> None:
        if self._down_since is not None:
            self._down_since = None
            self._on_state(True)
            log.warning("the shared limits store is available again")

    def _check_open(self) -> None:
        if self._down_since is not None and self._clock() - self._down_since >= self.fail_open_s:
            raise LimitsUnavailable("the shared rate limit and quota store is unavailable")

    async def close(self) -> None:
        await self.store.close()
