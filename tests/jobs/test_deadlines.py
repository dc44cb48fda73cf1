"""Deadlines: a job not started by its deadline ends expired and never runs; one already running is not touched."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from inference_client import AsyncInferenceClient, JobFailedError
from jobs.database import create_database
from jobs.housekeeping import Housekeeping
from jobs.metrics import JobsMetrics
from jobs.schema import TERMINAL_STATES
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from tests.jobs.conftest import embedded_settings, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FakeWorker

ROWS = [{"input_data": [1.0, 2.0, 3.0, 4.0]}]


def finished(status: dict) -> bool:
    return status["status"] in TERMINAL_STATES


async def test_a_queued_job_past_its_deadline_expires_and_never_runs(
    jobs_settings: JobsSettings, fake_worker: FakeWorker,
) -> None:
    async with gateway(jobs_settings) as client:
        submitted = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS, "deadline_s": 0.2})
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert job["expires_at"] is not None
        await asyncio.sleep(0.4)  # no sidecar before the deadline
        async with sidecar(jobs_settings):
            status = await wait_for_job(client, job["job_id"], finished)
        assert status["status"] == "expired" and status["error"]["code"] == "expired", status
        assert fake_worker.rows_seen == 0
        assert (await client.get(f"/jobs/{job['job_id']}/result")).status_code == 409
        listed = (await client.get("/jobs", params={"status": "expired"})).json()["jobs"]
        assert [one["job_id"] for one in listed] == [job["job_id"]]


async def test_the_housekeeping_expires_queued_jobs_only(tmp_path: Path, fake_worker: FakeWorker) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url)
    database = create_database(settings)
    housekeeping = Housekeeping(settings, database, ArtifactStore.from_settings(settings),
                                JobsMetrics(CollectorRegistry()), "test")
    try:
        async with gateway(settings) as client:
            overdue = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                        "deadline_s": 0.1})).json()["job_id"]
            later = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                      "deadline_s": 60})).json()["job_id"]
            plain = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()["job_id"]
            await asyncio.sleep(0.2)
            assert await housekeeping.hold_lease()
            assert await housekeeping.expire_overdue() == 1
            states = {job_id: (await client.get(f"/jobs/{job_id}")).json()["status"]
                      for job_id in (overdue, later, plain)}
        assert states == {overdue: "expired", later: "queued", plain: "queued"}
    finally:
        await database.close()


async def test_a_running_job_is_not_expired(tmp_path: Path, fake_worker: FakeWorker) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url, job_housekeeping_s=0.1, job_chunk_rows=1)
    fake_worker.delay_s = 0.5
    async with gateway(settings) as client, sidecar(settings):
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS * 3,
                                                   "deadline_s": 0.5})).json()["job_id"]
        status = await wait_for_job(client, job_id, finished)
    assert status["status"] == "succeeded", status
    assert datetime.fromisoformat(status["finished_at"]) > datetime.fromisoformat(status["expires_at"])


async def test_only_one_of_two_housekeepers_holds_the_lease(tmp_path: Path, fake_worker: FakeWorker) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url)
    database = create_database(settings)
    store, metrics = ArtifactStore.from_settings(settings), JobsMetrics(CollectorRegistry())
    first, second = (Housekeeping(settings, database, store, metrics, owner) for owner in ("a", "b"))
    try:
        assert await first.hold_lease() and await first.hold_lease()
        assert not await second.hold_lease()
    finally:
        await database.close()


@pytest.mark.parametrize(("fields", "message"), [
    ({"deadline_s": 1, "expires_at": "2999-01-01T00:00:00Z"}, "either deadline_s or expires_at"),
    ({"expires_at": "2999-01-01T00:00:00"}, "expires_at: give a time zone"),
    ({"expires_at": "2000-01-01T00:00:00Z"}, "expires_at: already past"),
    ({"deadline_s": 0}, "deadline_s"),
])
async def test_bad_deadlines_are_422(tmp_path: Path, fake_worker: FakeWorker, fields: dict, message: str) -> None:
    async with gateway(embedded_settings(tmp_path, fake_worker.url)) as client:
        answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS, **fields})
        assert answer.status_code == 422 and message in answer.json()["error"]["message"], answer.text


async def test_expires_at_is_kept_as_given(tmp_path: Path, fake_worker: FakeWorker) -> None:
    moment = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)
    async with gateway(embedded_settings(tmp_path, fake_worker.url)) as client:
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                "expires_at": moment.isoformat()})).json()
    assert datetime.fromisoformat(job["expires_at"]) == moment


async def test_the_clients_wait_ends_on_an_expired_job(tmp_path: Path, fake_worker: FakeWorker) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url)
    async with gateway(settings) as client:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS,
                                                   "deadline_s": 0.1})).json()["job_id"]
        await asyncio.sleep(0.2)
        async with sidecar(settings), AsyncInferenceClient(str(client.base_url)) as caller:
            with pytest.raises(JobFailedError) as raised:
                await caller.wait(job_id, timeout=20)
    assert raised.value.job.status == "expired" and raised.value.code == "expired"
