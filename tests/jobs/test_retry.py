"""POST /jobs/{id}/retry: a failed job runs again under its id, its failed run kept in earlier_runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from jobs.database import create_database
from jobs.records import JobRecords, NewJob
from jobs.schema import JobSpec
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from tests.jobs.conftest import broker_of, embedded_settings, finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FAKE_MODEL, FakeWorker
from tests.support import free_port

ROW = {"input_data": [1.0, 2.0, 3.0, 4.0]}
BODY = {"task": "batch_predict", "inputs": [ROW]}
KEY_A, KEY_B = "key-a-0123456789", "key-b-9876543210"


async def failed_job(client: httpx.AsyncClient, settings: JobsSettings, fake_worker: FakeWorker,
                     headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A job failed for the infrastructure's sake: the worker answered 503 to each of its deliveries."""
    fake_worker.failures = 10**6
    try:
        job = (await client.post("/jobs", json=BODY, headers=headers)).json()
        async with sidecar(settings):
            status = await wait_for_job(client, job["job_id"], finished)
    finally:
        fake_worker.failures = 0
    assert status["status"] == "failed" and status["attempts"] == settings.job_max_deliveries, status
    return status


def run_of(status: dict[str, Any]) -> dict[str, Any]:
    """How a failed run shows in earlier_runs."""
    return {key: status[key] for key in ("attempts", "error", "started_at", "finished_at")}


async def test_a_failed_job_runs_again_under_its_id_and_keeps_its_failed_run(
    jobs_settings: JobsSettings, fake_worker: FakeWorker
) -> None:
    key = {"Idempotency-Key": "order-7"}
    async with gateway(jobs_settings) as client:
        failed = await failed_job(client, jobs_settings, fake_worker, key)
        job_id = failed["job_id"]
        # The same Idempotency-Key answers with the failed job as it is, and queues nothing.
        again = await client.post("/jobs", json=BODY, headers=key)
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["job_id"] == job_id and again.json()["status"] == "failed"
        async with broker_of(jobs_settings) as broker:
            assert await broker.count(FAKE_MODEL) == 0

        retried = await client.post(f"/jobs/{job_id}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.headers["location"] == f"/jobs/{job_id}"
        queued = retried.json()
        assert queued["job_id"] == job_id and queued["status"] == "queued"
        assert queued["attempts"] == 0 and queued["error"] is None and queued["progress"]["done"] == 0
        assert queued["started_at"] is None and queued["finished_at"] is None
        assert queued["earlier_runs"] == [run_of(failed)]

        async with sidecar(jobs_settings):
            status = await wait_for_job(client, job_id, finished)
        assert status["status"] == "succeeded" and status["attempts"] == 1, status
        assert status["earlier_runs"] == [run_of(failed)]
        result = (await client.get(status["result_url"])).json()
        assert [row["prediction"] for row in result["output"]] == [[sum(ROW["input_data"])]]

        done = await client.post(f"/jobs/{job_id}/retry")
        assert done.status_code == 409 and done.json()["error"]["code"] == "job_not_failed"
        assert "succeeded" in done.json()["error"]["message"]


async def test_two_retries_at_once_queue_the_job_once(jobs_settings: JobsSettings, fake_worker: FakeWorker) -> None:
    async with gateway(jobs_settings) as client:
        failed = await failed_job(client, jobs_settings, fake_worker)
        job_id = failed["job_id"]
        answers = await asyncio.gather(*(client.post(f"/jobs/{job_id}/retry") for _ in range(2)))
        assert sorted(answer.status_code for answer in answers) == [202, 409], [a.text for a in answers]
        loser = next(answer for answer in answers if answer.status_code == 409)
        assert loser.json()["error"]["code"] == "job_not_failed"
        async with broker_of(jobs_settings) as broker:
            assert await broker.count(FAKE_MODEL) == 1
        async with sidecar(jobs_settings):
            status = await wait_for_job(client, job_id, finished)
    assert status["status"] == "succeeded" and status["earlier_runs"] == [run_of(failed)], status
    assert fake_worker.calls == 1 and fake_worker.rows_seen == 1  # it ran once


async def test_a_retry_is_written_only_over_the_failed_run_it_read(jobs_settings: JobsSettings) -> None:
    """The conditional write behind the 409: a second retry of the same read, or one of a read from before the
    job failed again, changes nothing (no second publish, no run lost from earlier_runs)."""
    database = create_database(jobs_settings)
    records = JobRecords(database, ArtifactStore.from_settings(jobs_settings), jobs_settings)
    try:
        status, _ = await records.create(NewJob(JobSpec(job_id="ab" * 16, task="batch_predict", fingerprint="f"), 1))
        first = await records.fail(status, "delivery_limit", "gave up")
        assert first is not None
        queued = await records.retry(first)
        assert queued is not None and queued.status == "queued" and len(queued.earlier_runs) == 1
        assert await records.retry(first) is None
        second = await records.fail(queued, "delivery_limit", "gave up again")
        assert second is not None
        assert await records.retry(first) is None
        again = await records.retry(second)
        assert again is not None
        assert [run.error.message for run in again.earlier_runs if run.error] == ["gave up", "gave up again"]
    finally:
        await database.close()


async def test_only_a_failed_job_can_be_retried(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with gateway(embedded_settings(tmp_path, fake_worker.url)) as client:
        queued = (await client.post("/jobs", json=BODY)).json()
        cancelled = (await client.post("/jobs", json=BODY)).json()
        await client.delete(cancelled["status_url"])
        for job, state in ((queued, "queued"), (cancelled, "cancelled")):
            answer = await client.post(f"/jobs/{job['job_id']}/retry")
            assert answer.status_code == 409 and answer.json()["error"]["code"] == "job_not_failed", answer.text
            assert state in answer.json()["error"]["message"]
            assert (await client.get(job["status_url"])).json()["status"] == state
        for job_id in ("0123456789abcdef0123456789abcdef", "not-a-job-id"):
            answer = await client.post(f"/jobs/{job_id}/retry")
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found", job_id


async def test_another_keys_job_is_not_found(tmp_path: Path, fake_worker: FakeWorker) -> None:
    async with gateway(embedded_settings(tmp_path, fake_worker.url), api_keys=[KEY_A, KEY_B]) as client:
        job = (await client.post("/jobs", json=BODY, headers={"X-API-Key": KEY_A})).json()
        path = f"/jobs/{job['job_id']}/retry"
        assert (await client.post(path)).status_code == 401
        other = await client.post(path, headers={"X-API-Key": KEY_B})
        assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found"
        own = await client.post(path, headers={"X-API-Key": KEY_A})
        assert own.status_code == 409  # found: it is queued, not failed


async def test_a_retry_the_broker_refuses_is_503_and_leaves_the_job_failed(
    tmp_path: Path, fake_worker: FakeWorker
) -> None:
    """Never queued but unpublished: the job is failed as not_queued again, and a later retry queues it."""
    settings = embedded_settings(tmp_path, fake_worker.url)
    refusing = settings.model_copy(update={"amqp_url": f"amqp://guest:guest@127.0.0.1:{free_port()}/"})
    async with gateway(refusing) as client:
        assert (await client.post("/jobs", json=BODY)).status_code == 503
        job = (await client.get("/jobs")).json()["jobs"][0]
        answer = await client.post(f"/jobs/{job['job_id']}/retry")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
        assert answer.json()["error"]["code"] == "jobs_unavailable"
        status = (await client.get(job["status_url"])).json()
    assert status["status"] == "failed" and status["error"]["code"] == "not_queued", status
    assert status["earlier_runs"] == [run_of(job)]
    async with gateway(settings) as client:  # the same records, a broker that takes the job
        assert (await client.post(f"/jobs/{job['job_id']}/retry")).status_code == 202
        async with sidecar(settings):
            done = await wait_for_job(client, job["job_id"], finished)
    assert done["status"] == "succeeded" and done["earlier_runs"] == [run_of(job), run_of(status)], done
