"""Database outages: a PostgreSQL of the test's own is stopped, restarted and wiped under the job path.

The server is :class:`bench.outage_servers.PgServer`, never the shared one on :5432. The tests skip when
the PostgreSQL server binaries are not installed, unless REQUIRE_DATABASE=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from bench.outage_servers import PgServer, postgres_bin

REQUIRED = os.environ.get("REQUIRE_DATABASE") == "1"


@pytest.fixture
def pg_server(tmp_path: Path) -> Iterator[PgServer]:
    if postgres_bin() is None:
        if REQUIRED:
            pytest.fail("REQUIRE_DATABASE=1 but the PostgreSQL server (initdb, postgres) is not installed")
        pytest.skip("the PostgreSQL server (initdb, postgres) is not installed; REQUIRE_DATABASE=1 to fail")
    with PgServer(tmp_path / "postgres") as server:
        yield server


async def _tables(url: str) -> list[str]:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        return [row["tablename"] for row in await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    finally:
        await connection.close()


async def test_a_server_of_our_own_stops_restarts_and_wipes(pg_server: PgServer) -> None:
    url = pg_server.url
    connection = await asyncpg.connect(url, timeout=5)
    await connection.execute("CREATE TABLE kept (x INTEGER)")
    await connection.close()

    pg_server.stop()
    with pytest.raises(OSError):
        await asyncpg.connect(url, timeout=5)
    pg_server.start()
    assert await _tables(url) == ["kept"]

    pg_server.wipe()
    pg_server.start()
    assert pg_server.url == url  # the same port: clients reconnect to an empty cluster
    assert await _tables(url) == []
