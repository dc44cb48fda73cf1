"""A sidecar lives through outages of its database and its broker: jobs wait, no delivery is spent on an outage,
no consumer and no sidecar exits, and each outage shows on the sidecar's /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.broker import create_broker
from jobs.database import Database, create_database
from jobs.errors import JobsUnavailable
from jobs.sidecar import Sidecar
from tests.jobs.conftest import embedded_settings, finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FAKE_MODEL, FakeWorker
from tests.support import free_port

ROWS = [{"input_data": [1.0, 2.0, 3.0, float(i)]} for i in range(4)]


class SwitchableDatabase:
    """The sidecar's own database, which a test takes down: while ``down`` every call meets an outage."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self.down = False
        self.refused = 0  # calls answered with the outage

    async def _call(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        if self.down:
            self.refused += 1
            raise JobsUnavailable("the job database is unavailable")
        return await getattr(self._database, method)(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._call("execute", sql, args)  # type: ignore[no-any-return]

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self._call("fetch", sql, args)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        return await self._call("fetchrow", sql, args)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._database.close()


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


def dependency_up(runner: Sidecar, name: str) -> float | None:
    """The sidecar's own gauge, as its /metrics shows it."""
    return runner.metrics.registry.get_sample_value("jobs_sidecar_dependency_up", {"dependency": name})


async def test_a_job_delivered_in_a_database_outage_waits_for_it_and_spends_no_delivery(
    fake_worker: FakeWorker, tmp_path: Path
) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url, job_max_deliveries=2, sidecar_database_retry_s=60.0)
    database = SwitchableDatabase(create_database(settings))
    database.down = True
    async with gateway(settings) as client:
        accepted = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        async with sidecar(settings, database=database) as runner:
            await until(lambda: database.refused >= 3)  # the delivery is held while the record cannot be read
            assert dependency_up(runner, "database") == 0
            waiting = (await client.get(f"/jobs/{job_id}")).json()
            assert (waiting["status"], waiting["attempts"]) == ("queued", 0)
            database.down = False
            done = await wait_for_job(client, job_id, finished)
            assert dependency_up(runner, "database") == 1
    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 1, None), done
    assert fake_worker.rows_seen == len(ROWS)


async def test_a_dead_letter_met_by_a_database_outage_is_settled_once_it_is_back(
    fake_worker: FakeWorker, tmp_path: Path
) -> None:
    """The dead-letter consumer waits for the database instead of ending (which ended the sidecar)."""
    settings = embedded_settings(tmp_path, fake_worker.url, job_max_deliveries=1, sidecar_database_retry_s=60.0,
                                 embedded_visibility_timeout_s=0.3)
    async with gateway(settings) as client:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()["job_id"]
        # A sidecar that took the job and died: its one delivery is spent, so the next claim dead-letters it.
        dead_sidecar = create_broker(settings)
        await dead_sidecar.start()
        async for _ in dead_sidecar.consume(FAKE_MODEL, 1):
            break
        await dead_sidecar.close()
        database = SwitchableDatabase(create_database(settings))
        database.down = True
        async with sidecar(settings, database=database) as runner:
            await until(lambda: database.refused >= 3)
            assert dependency_up(runner, "database") == 0
            database.down = False
            failed = await wait_for_job(client, job_id, finished)
    assert (failed["status"], failed["error"]["code"]) == ("failed", "delivery_limit"), failed
    assert "stopped or lost the broker" in failed["error"]["message"]
    assert fake_worker.rows_seen == 0


async def test_a_sidecar_started_in_a_broker_outage_waits_for_the_broker(
    fake_worker: FakeWorker, tmp_path: Path
) -> None:
    """No broker answers: the sidecar stays up (it used to exit 1, again and again), says so, and stops cleanly."""
    settings = embedded_settings(tmp_path, fake_worker.url, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    async with sidecar(settings) as runner:
        await until(lambda: dependency_up(runner, "broker") == 0)
    # Leaving the block stopped it as SIGTERM does: run() returned instead of raising.
