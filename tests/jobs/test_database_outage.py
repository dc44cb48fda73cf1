"""Database outages: a PostgreSQL of the test's own is stopped, restarted and wiped under the job path.

The server is :class:`bench.outage_servers.PgServer`, never the shared one on :5432. The tests skip when
the PostgreSQL server binaries are not installed, unless REQUIRE_DATABASE=1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from bench.outage_servers import PgServer
from jobs.database import MIGRATIONS, UNAVAILABLE, PostgresDatabase
from jobs.errors import JobsUnavailable
from tests.jobs.conftest import embedded_settings, gateway
from tests.jobs.fake_worker import FakeWorker

ROWS = [{"input_data": [1.0, 2.0, 3.0, float(i)]} for i in range(4)]



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


def _adapter(server: PgServer, url: str | None = None) -> PostgresDatabase:
    return PostgresDatabase(url or server.url, pool_size=4)


async def _only_unavailable(call: Awaitable[object]) -> bool:
    """True when ``call`` succeeded, False when it met the outage; any other error fails the test."""
    try:
        await call
    except JobsUnavailable as exc:
        assert exc.message.startswith(UNAVAILABLE), exc.message
        assert "postgresql://" not in exc.message and "Error" not in exc.message  # no URL, no repr
        return False
    return True


async def _until_it_works(database: PostgresDatabase, timeout_s: float = 15) -> int:
    """Calls until one succeeds (each one either succeeds or is JobsUnavailable); how many met the outage."""
    async def calls() -> int:
        failed = 0
        while not await _only_unavailable(database.fetch("SELECT job_id FROM jobs")):
            failed += 1
            await asyncio.sleep(0.1)
        return failed

    return await asyncio.wait_for(calls(), timeout_s)


async def test_a_stopped_database_is_unavailable_and_works_again_when_it_is_back(
        pg_server: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    database = _adapter(pg_server)
    try:
        assert await database.execute("UPDATE jobs SET status = 'x' WHERE job_id = ''") == 0
        await asyncio.to_thread(pg_server.stop)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jobs.database"):
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: database.execute("UPDATE jobs SET status = 'x' WHERE job_id = ''"),
                lambda: database.fetch("SELECT job_id FROM jobs"), lambda: database.fetchrow("SELECT 1 AS one"),
            ]
            for call in calls * 3:
                with pytest.raises(JobsUnavailable) as raised:
                    await call()
                assert raised.value.message == UNAVAILABLE
            await asyncio.to_thread(pg_server.start)
            await _until_it_works(database)
        assert await database.fetchrow("SELECT 1 AS one") == {"one": 1}
        # The outage is logged with its error when it starts and once when it ends, not once per call.
        logged = [record.getMessage() for record in caplog.records if record.name == "jobs.database"]
        assert len(logged) == 2, logged
        assert logged[0].startswith(UNAVAILABLE) and "Error" in logged[0]
        assert logged[1] == "the job database is available again"
    finally:
        await database.close()


async def _until_running(server: PgServer, statement: str) -> None:
    """Until ``statement`` runs on the server (pg_stat_activity), asked over a connection of its own."""
    connection = await asyncpg.connect(server.url)
    try:
        query = "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'"
        while not await connection.fetchval(query, statement):
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def test_a_database_killed_mid_statement_is_unavailable(pg_server: PgServer) -> None:
    database = _adapter(pg_server)
    try:
        await database.fetch("SELECT 1")
        slow = asyncio.create_task(database.fetch("SELECT pg_sleep(30)"))
        await asyncio.wait_for(_until_running(pg_server, "SELECT pg_sleep(30)"), 10)
        await asyncio.to_thread(pg_server.kill)
        with pytest.raises(JobsUnavailable):
            await asyncio.wait_for(slow, 10)
        await asyncio.to_thread(pg_server.start)
        await _until_it_works(database)
    finally:
        await database.close()


async def test_a_database_restarted_empty_gets_its_schema_back(pg_server: PgServer) -> None:
    database, other_process = _adapter(pg_server), _adapter(pg_server)
    try:
        await database.execute("INSERT INTO jobs (job_id, task, status, fingerprint, options, created_at, "
                               "updated_at) VALUES ('a', 'batch_predict', 'queued', 'f', '{}', 1, 1)")
        assert await other_process.fetch("SELECT job_id FROM jobs") == [{"job_id": "a"}]
        await asyncio.to_thread(pg_server.wipe)
        await asyncio.to_thread(pg_server.start)
        # Both processes meet the empty database; each call is 503 or works, and soon they work.
        await asyncio.gather(_until_it_works(database), _until_it_works(other_process))
        assert await database.fetch("SELECT job_id FROM jobs") == []
        versions = await other_process.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [row["version"] for row in versions] == list(range(1, len(MIGRATIONS) + 1))  # migrated once
    finally:
        await database.close()
        await other_process.close()


async def test_a_missing_database_is_unavailable_with_a_clear_message(pg_server: PgServer) -> None:
    admin = await asyncpg.connect(pg_server.url, timeout=5)
    try:
        await admin.execute("CREATE DATABASE jobs")
        url = pg_server.url.rsplit("/", 1)[0] + "/jobs"
        database = _adapter(pg_server, url)
        await database.fetch("SELECT job_id FROM jobs")
        await admin.execute("DROP DATABASE jobs WITH (FORCE)")
        for _ in range(3):
            with pytest.raises(JobsUnavailable) as raised:
                await database.fetch("SELECT job_id FROM jobs")
            assert raised.value.message.startswith(UNAVAILABLE)
        assert raised.value.message == f"{UNAVAILABLE}: the database that DATABASE_URL names does not exist"
        await admin.execute("CREATE DATABASE jobs")
        await _until_it_works(database)
        await database.close()
        never_there = _adapter(pg_server, pg_server.url.rsplit("/", 1)[0] + "/nowhere")
        with pytest.raises(JobsUnavailable, match="does not exist"):
            await never_there.fetch("SELECT 1")
        await never_there.close()
    finally:
        await admin.close()


async def test_a_mistake_in_our_sql_is_not_an_outage(pg_server: PgServer) -> None:
    database = _adapter(pg_server)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await database.fetch("SELEC 1")
        with pytest.raises(asyncpg.InterfaceError, match="arguments"):
            await database.fetch("SELECT $1::int AS one")
        with pytest.raises(asyncpg.UndefinedColumnError):
            await database.fetch("SELECT nope FROM jobs")
        assert await database.fetchrow("SELECT 1 AS one") == {"one": 1}
    finally:
        await database.close()


def assert_database_503(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    error = answer.json()["error"]
    assert error["code"] == "jobs_unavailable" and error["message"].startswith(UNAVAILABLE), error
    assert len(error["message"]) < 100 and "postgresql://" not in error["message"]


async def test_job_requests_answer_503_in_an_outage_and_after_a_wipe_then_202(
        pg_server: PgServer, fake_worker: FakeWorker, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url, database_url=pg_server.url)
    body = {"task": "batch_predict", "inputs": ROWS}

    async def accepted(key: str) -> dict:
        """POST /jobs after each 503, as a client does; every answer is 503 (the database's) or 202."""
        async def attempt() -> dict:
            while True:
                answer = await client.post("/jobs", json=body, headers={"Idempotency-Key": key})
                if answer.status_code == 202:
                    return answer.json()
                assert answer.status_code == 503, answer.text
                await asyncio.sleep(0.1)

        return await asyncio.wait_for(attempt(), 30)

    async with gateway(settings) as client:
        before = await accepted("before")
        await asyncio.to_thread(pg_server.stop)
        assert_database_503(await client.post("/jobs", json=body, headers={"Idempotency-Key": "during"}))
        assert_database_503(await client.get(f"/jobs/{before['job_id']}"))
        assert_database_503(await client.get("/jobs"))
        await asyncio.to_thread(pg_server.start)
        await accepted("during")
        assert (await client.get(f"/jobs/{before['job_id']}")).status_code == 200

        await asyncio.to_thread(pg_server.wipe)
        await asyncio.to_thread(pg_server.start)
        answer = await client.post("/jobs", json=body, headers={"Idempotency-Key": "after"})
        if answer.status_code != 202:
            assert_database_503(answer)
        after = await accepted("after")
        assert (await client.get(f"/jobs/{after['job_id']}")).status_code == 200
        assert (await client.get(f"/jobs/{before['job_id']}")).status_code == 404  # gone with the data folder
