"""Retention: finished jobs past JOB_RETENTION_S go, records and store objects; nothing unfinished is touched."""

from __future__ import annotations

import asyncio

from jobs.settings import JobsSettings
from jobs.store import ArtifactStore, job_key
from tests.jobs.conftest import finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FakeWorker

ROWS = [{"input_data": [float(i), 1.0, 2.0, 3.0]} for i in range(4)]


async def test_finished_jobs_and_their_objects_go_unfinished_ones_stay(
    jobs_settings: JobsSettings, fake_worker: FakeWorker,
) -> None:
    # Rows and results in the store, not the record; one job at a time, so a second one stays queued.
    settings = jobs_settings.model_copy(update={
        "job_retention_s": 1.0, "job_housekeeping_s": 0.2, "job_inline_input_bytes": 16,
        "job_inline_result_bytes": 16, "sidecar_prefetch": 1, "sidecar_concurrency": 1, "job_chunk_rows": 1})
    store = ArtifactStore.from_settings(settings)
    async with gateway(settings) as client, sidecar(settings) as runner:
        done = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()["job_id"]
        await wait_for_job(client, done, finished)
        assert await store.get(job_key(done, "result.json")) is not None
        assert (await client.get(f"/jobs/{done}/result")).status_code == 200
        fake_worker.delay_s = 1.0  # a chunk per row: running for 12 s, past the retention
        running = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS * 3})).json()["job_id"]
        queued = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()["job_id"]
        await wait_for_job(client, running, lambda status: status["status"] == "running")

        async def gone() -> None:
            while (await client.get(f"/jobs/{done}")).status_code != 404:
                await asyncio.sleep(0.1)

        await asyncio.wait_for(gone(), 10)
        assert (await client.get(f"/jobs/{done}/result")).status_code == 404
        assert await store.delete_under(job_key(done, "")) == 0  # nothing left under jobs/<id>/: rows nor result
        await asyncio.sleep(1.5)  # more rounds, past the retention of anything finished when they began
        assert (await client.get(f"/jobs/{running}")).json()["status"] == "running"
        assert (await client.get(f"/jobs/{queued}")).json()["status"] == "queued"
        assert [job["job_id"] for job in (await client.get("/jobs")).json()["jobs"]] == [queued, running]
        assert runner.metrics.registry.get_sample_value("jobs_deleted_total") == 1
        fake_worker.delay_s = 0.0
