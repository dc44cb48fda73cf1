"""A sidecar lives through outages of its database and its broker: jobs wait, no delivery is spent on an outage,
no consumer and no sidecar exits, and each outage shows on the sidecar's /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.broker import create_broker
from jobs.database import Database, create_database
from jobs.errors import JobsUnavailable
from jobs.spool import ResultSpool
from tests.jobs.conftest import dependency_up, embedded_settings, finished, gateway, sidecar, until, wait_for_job
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


async def test_a_store_that_refuses_spends_the_attempts_and_fails_the_job_with_why(
    forbidding_s3: tuple[str, list[bytes]], fake_worker: FakeWorker, tmp_path: Path
) -> None:
    """A refusal (403) is not an outage to wait out: each attempt counts, and the job fails saying so, instead of
    being handed back for ever."""
    url, _ = forbidding_s3
    settings = embedded_settings(tmp_path, fake_worker.url, s3_endpoint_url=url, s3_bucket="jobs",
                                 aws_access_key_id="test", aws_secret_access_key="test", job_inline_result_bytes=0,
                                 job_max_deliveries=2, sidecar_store_retry_s=30.0)
    async with gateway(settings) as client:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()["job_id"]
        async with sidecar(settings, patient_store=True):
            failed = await wait_for_job(client, job_id, finished)
    assert (failed["status"], failed["error"]["code"]) == ("failed", "delivery_limit"), failed
    assert "the artifact store refused the request (PermissionDeniedError)" in failed["error"]["message"]
    assert fake_worker.rows_seen == 2 * len(ROWS)  # computed on each of its two deliveries, kept by neither


async def test_a_sidecar_drops_the_kept_results_of_jobs_that_finished_meanwhile(
    fake_worker: FakeWorker, tmp_path: Path
) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url)
    async with gateway(settings) as client:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()["job_id"]
        async with sidecar(settings):
            await wait_for_job(client, job_id, finished)
        # Kept here while its next delivery went to a sidecar of another machine, which wrote it.
        assert await ResultSpool.from_settings(settings).keep(job_id, b"[]", FAKE_MODEL, "1")
        async with sidecar(settings) as runner:
            await until(lambda: not runner.spool.holds(job_id))
        assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "succeeded"
