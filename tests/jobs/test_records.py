"""Job records in the database: listing, filters, keyset pages, the served model, owners, migrations."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from jobs.database import MIGRATIONS, create_database
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


async def test_a_database_of_the_first_schema_is_migrated_keeping_its_jobs(jobs_settings: JobsSettings) -> None:
    """Migration 2 adds the input shape and the result's model; jobs recorded before keep all they had."""
    first = create_database(jobs_settings)
    await first.execute("SELECT 1")  # migrates to the latest schema; go back to the first one
    for column in ("input_shape", "result_model_name", "result_model_version"):
        await first.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    await first.execute("DELETE FROM schema_version WHERE version > 1")
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
        assert status.input_shape is None and status.result_model_name is None
        versions = await database.fetch("SELECT version FROM schema_version")
        assert sorted(row["version"] for row in versions) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await database.close()
