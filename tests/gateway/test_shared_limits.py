"""The shared stores of rate limits and quotas: two clients of one store see one count; an outage fails open, then
closed, and ends by itself. Redis tests use a Redis of their own (``redis-server``), never the machine's."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.shared_limits import FileLimits, GuardedLimits, LimitStore, LimitsUnavailable, Quota, RedisLimits
from tests.support import free_port, require_redis_server, wait_until

QUOTA = Quota("rows_per_day", 100, "k:rows_per_day:2026-01-01", 2e9)
MONTH = Quota("rows_per_month", 120, "k:rows_per_month:2026-01", 2e9)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own on a free port, nothing saved; skipped without redis-server (failed under
    REQUIRE_REDIS=1)."""
    binary = require_redis_server()
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(port), 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def _answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port).ping())
    except redis.ConnectionError:
        return False


async def _charge_alternating(stores: list[LimitStore], times: int) -> int:
    charged = 0
    for index in range(times):
        charge = await stores[index % len(stores)].charge([QUOTA, MONTH], 1)
        charged += charge.refused is None
    return charged


def test_two_processes_files_share_one_quota_exactly_and_a_refused_charge_adds_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        stores = [FileLimits(tmp_path / "limits.sqlite3"), FileLimits(tmp_path / "limits.sqlite3")]
        assert await _charge_alternating(stores, 150) == 100
        refused = await stores[0].charge([QUOTA, MONTH], 1)
        assert refused.refused == QUOTA and refused.used == (100,)
        assert (await stores[1].charge([QUOTA, MONTH], 0)).used == (100, 100)
        assert (await stores[1].charge([QUOTA, MONTH], -10)).used == (90, 90)  # given back
        for store in stores:
            await store.close()

    asyncio.run(scenario())


def test_two_processes_files_share_one_token_bucket(tmp_path: Path) -> None:
    async def scenario() -> None:
        stores = [FileLimits(tmp_path / "limits.sqlite3"), FileLimits(tmp_path / "limits.sqlite3")]
        waits = [await stores[index % 2].take("k", 0.001, 4) for index in range(6)]
        assert waits[:4] == [0.0] * 4 and all(wait > 0 for wait in waits[4:])
        assert await stores[0].take("other key", 0.001, 4) == 0.0

    asyncio.run(scenario())


def test_an_outage_fails_open_on_the_last_known_counts_then_closed_and_ends_by_itself(tmp_path: Path) -> None:
    async def scenario() -> None:
        now = [0.0]
        states: list[bool] = []
        real = FileLimits(tmp_path / "limits.sqlite3")
        guarded = GuardedLimits(real, fail_open_s=10, on_state=states.append, clock=lambda: now[0])
        assert (await guarded.charge([QUOTA], 95)).refused is None
        await real.close()  # the store fails from now on
        assert (await guarded.charge([QUOTA], 5)).refused is None  # judged by the last known 95
        assert (await guarded.charge([QUOTA], 1)).refused == QUOTA
        assert guarded.down and states == [False]
        assert await guarded.take("k", 0.001, 1) == 0.0 and await guarded.take("k", 0.001, 1) > 0  # a local bucket
        now[0] = 11.0
        with pytest.raises(LimitsUnavailable):
            await guarded.charge([QUOTA], 1)
        with pytest.raises(LimitsUnavailable):
            await guarded.take("k", 1, 1)
        guarded.store = FileLimits(tmp_path / "limits.sqlite3")  # the store is back
        now[0] = 12.0
        # The store's own count again: the rows let through in the outage were counted only in this process.
        assert (await guarded.charge([QUOTA], 1)).used == (96,)
        assert not guarded.down and states == [False, True]

    asyncio.run(scenario())


def test_redis_shares_quotas_and_buckets_between_clients_and_its_outage_fails_open_then_closed(
    redis_url: str,
) -> None:
    async def scenario() -> None:
        stores = [RedisLimits(redis_url, 0.25), RedisLimits(redis_url, 0.25)]
        assert await _charge_alternating(stores, 150) == 100
        refused = await stores[1].charge([QUOTA, MONTH], 1)
        assert refused.refused == QUOTA and refused.used == (100,)
        assert (await stores[0].charge([QUOTA, MONTH], -1)).used == (99, 99)
        waits = [await stores[index % 2].take("k", 0.001, 3) for index in range(5)]
        assert waits[:3] == [0.0] * 3 and all(wait > 0 for wait in waits[3:])
        for store in stores:
            await store.close()
        guarded = GuardedLimits(RedisLimits(redis_url.replace(redis_url.split(":")[2].split("/")[0],
                                                              str(free_port())), 0.25),
                                fail_open_s=0, on_state=lambda up: None)
        with pytest.raises(LimitsUnavailable):
            await guarded.take("k", 1, 1)  # nothing listens there: an outage, fail closed at once
        await guarded.close()

    asyncio.run(scenario())
