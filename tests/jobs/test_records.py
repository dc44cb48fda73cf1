"""Job records in the database: listing, filters, keyset pages, the served model, owners, migrations."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

import pytest

from jobs import database as database_module
from jobs.database import MIGRATIONS, UNAVAILABLE, create_database
from jobs.errors import JobsUnavailable
from jobs.records import JobRecords, NewJob
from jobs.schema import JobSpec
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from tests.jobs.conftest import finished, gateway, sidecar, wait_for_job

ROW = {"input_data": [1.0, 2.0, 3.0, 4.0]}


async def _served(client) -> None:  # type: ignore[no-untyped-def]
    while (await client.get("/gateway/health")).status_code != 200:  # the first probe reads /metadata
        await asyncio.sleep(0.05)


async def test_jobs_are_listed_newest_first_a_page_at_a_time(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client:
        await _served(client)
        ids = [(await client.post("/jobs", json={"task": "batch_predict", "inputs": [ROW]})).json()["job_id"]
               for _ in range(5)]
        seen, cursor, pages = [], None, 0
        while True:
            page = (await client.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
            seen += [job["job_id"] for job in page["jobs"]]
            pages += 1
            if (cursor := page["next_cursor"]) is None:
                break
        assert seen == ids[::-1] and pages == 3
        first = (await client.get(f"/jobs/{ids[0]}")).json()
        assert first["model_name"] == "fake" and first["model_version"] == "1" and first["owner"] is None


async def test_the_list_filters_by_status_task_and_model(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client:
        await _served(client)
        done = (await client.post("/jobs", json={"task": "batch_predict", "inputs": [ROW]})).json()["job_id"]
        async with sidecar(jobs_settings):
            await wait_for_job(client, done, finished)
        queued = (await client.post("/jobs", json={"task": "batch_predict", "inputs": [ROW]})).json()["job_id"]

        async def listed(**query: str) -> list[str]:
            answer = await client.get("/jobs", params=query)
            assert answer.status_code == 200, answer.text
            return [job["job_id"] for job in answer.json()["jobs"]]

        assert await listed(status="succeeded") == [done]
        assert await listed(status="queued") == [queued]
        assert await listed(task="batch_predict") == [queued, done]
        assert await listed(task="train") == []
        assert await listed(model="fake") == [queued, done]
        assert await listed(model="other") == []


@pytest.mark.parametrize(
    ("query", "where"),
    [
        ({"status": "done"}, "status"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
        ({"limit": "100000"}, "limit"), ({"cursor": "nope"}, "cursor"), ({"owner_id": "a"}, "owner_id"),
    ],
)
async def test_a_bad_list_query_is_422(jobs_settings: JobsSettings, query: dict[str, str], where: str) -> None:
    async with gateway(jobs_settings) as client:
        answer = await client.get("/jobs", params=query)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["message"].startswith(where)


def _job(n: int, owner: str | None) -> NewJob:
    job_id = hashlib.sha256(str(n).encode()).hexdigest()[:32]
    return NewJob(JobSpec(job_id=job_id, task="batch_predict", fingerprint=str(n)), 1, b"[]", owner=owner)


async def test_owners_are_recorded_and_filtered(jobs_settings: JobsSettings) -> None:
    database = create_database(jobs_settings)
    records = JobRecords(database, ArtifactStore.from_settings(jobs_settings), jobs_settings)
    try:
        for n, owner in enumerate(["key-a", "key-b", "key-a", None]):
            await records.create(_job(n, owner))
        mine, _ = await records.list(owner="key-a")
        assert [job.job_id for job in mine] == [_job(2, None).spec.job_id, _job(0, None).spec.job_id]
        assert {job.owner for job in mine} == {"key-a"}
        everyone, _ = await records.list()
        assert len(everyone) == 4
    finally:
        await database.close()


async def test_the_schema_is_migrated_once_however_many_processes_open_it(jobs_settings: JobsSettings) -> None:
    databases = [create_database(jobs_settings) for _ in range(3)]
    try:
        rows = await asyncio.gather(*(db.fetch("SELECT version FROM schema_version") for db in databases))
        assert all(sorted(row["version"] for row in found) == list(range(1, len(MIGRATIONS) + 1)) for found in rows)
    finally:
        for db in databases:
            await db.close()


async def test_a_database_of_the_first_schema_is_migrated_keeping_its_jobs(
        jobs_settings: JobsSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 2 adds the input shape and the result's model, 3 the earlier runs; jobs recorded before keep all
    they had."""
    with monkeypatch.context() as first_only:
        first_only.setattr(database_module, "MIGRATIONS", MIGRATIONS[:1])
        first = create_database(jobs_settings)
        await first.execute("SELECT 1")  # migrates to the first schema only
    await first.execute(
        "INSERT INTO jobs (job_id, task, status, fingerprint, options, model_name, model_version, created_at, "
        "updated_at) VALUES ($1, 'batch_predict', 'succeeded', 'f', '{}', 'm', '1', 1, 1)", "cd" * 16,
    )
    await first.close()
    database = create_database(jobs_settings)
    try:
        records = JobRecords(database, ArtifactStore.from_settings(jobs_settings), jobs_settings)
        status = await records.status("cd" * 16)
        assert status is not None
        assert (status.model_name, status.model_version, status.status) == ("m", "1", "succeeded")
        assert status.input_shape is None and status.result_model_name is None and status.earlier_runs == []
        versions = await database.fetch("SELECT version FROM schema_version")
        assert sorted(row["version"] for row in versions) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await database.close()


async def test_a_database_whose_tables_went_missing_gets_them_back(jobs_settings: JobsSettings) -> None:
    """A database restarted empty: the call that meets the missing tables is a 503, the next ones migrate again."""
    database = create_database(jobs_settings)
    records = JobRecords(database, ArtifactStore.from_settings(jobs_settings), jobs_settings)
    try:
        await records.create(_job(0, None))
        await database.execute("DROP TABLE jobs")
        await database.execute("DROP TABLE schema_version")
        with pytest.raises(JobsUnavailable) as raised:
            await records.status(_job(0, None).spec.job_id)
        assert raised.value.message == f"{UNAVAILABLE}: its tables are missing and are being created again"
        assert await records.status(_job(0, None).spec.job_id) is None
        await records.create(_job(1, None))
        assert [job.job_id for job in (await records.list())[0]] == [_job(1, None).spec.job_id]
        versions = await database.fetch("SELECT version FROM schema_version")
        assert sorted(row["version"] for row in versions) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await database.close()


async def test_a_mistake_in_our_sql_is_a_bug_not_an_outage(jobs_settings: JobsSettings) -> None:
    database = create_database(jobs_settings)
    try:
        await database.execute("SELECT 1")
        for mistake in ("SELEC 1", "SELECT nope FROM jobs"):
            with pytest.raises(Exception) as raised:
                await database.fetch(mistake)
            assert not isinstance(raised.value, JobsUnavailable), mistake
        assert await database.fetchrow("SELECT 1 AS one") == {"one": 1}
    finally:
        await database.close()


async def test_jobs_written_together_share_a_statement_and_each_gets_its_own_answer(
        jobs_settings: JobsSettings) -> None:
    """Concurrent inserts and status writes are batched (jobs.batching): a taken id, a finished job and two
    writes of one job in the same batch still behave as if written one at a time, input shape and result model
    included."""
    database = create_database(jobs_settings)
    records = JobRecords(database, ArtifactStore.from_settings(jobs_settings), jobs_settings)
    try:
        jobs = [replace(_job(n, None), input_shape=(4,)) for n in [0, 1, 2, 1]]
        created = await asyncio.gather(*(records.create(job) for job in jobs))
        assert [existing is None for _, existing in created] == [True, True, True, False]
        assert created[3][1] is not None and created[3][1].spec.job_id == _job(1, None).spec.job_id
        statuses = [status for status, _ in created[:3]]
        assert await records.save(statuses[2], status="cancelled") is not None
        written = await asyncio.gather(
            records.save(statuses[0], status="running", attempts=1),
            records.save(statuses[0], status="running", attempts=2),
            records.succeed(statuses[1], _job(1, None).spec, ["answer"], computed_by=("m", "2")),
            records.save(statuses[2], status="running"),  # finished: not written
        )
        assert [status is not None for status in written] == [True, True, True, False]
        now = await asyncio.gather(*(records.status(status.job_id) for status in statuses))
        assert [(status.status, status.attempts) for status in now] == [
            ("running", 2), ("succeeded", 0), ("cancelled", 0)]
        assert all(tuple(status.input_shape or ()) == (4,) for status in now)
        assert (now[1].result_model_name, now[1].result_model_version) == ("m", "2")
        record = await records.get(statuses[1].job_id)
        assert record is not None and record.result is not None and b'"answer"' in record.result
        assert await records.status("0" * 32) is None
    finally:
        await database.close()
