"""Small jobs share worker calls, and each still gets exactly its own answers or its own error."""

from __future__ import annotations

import asyncio

from jobs.settings import JobsSettings
from tests.jobs.conftest import finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FakeWorker


async def test_one_row_jobs_share_worker_calls_and_a_bad_row_fails_only_its_job(
    jobs_settings: JobsSettings, fake_worker: FakeWorker
) -> None:
    settings = jobs_settings.model_copy(update={"job_chunk_rows": 64, "sidecar_worker_calls": 1})
    fake_worker.delay_s = 0.05
    rows = [{"input_data": [float(i), 1.0, 1.0, 1.0]} for i in range(30)]
    rows[7] = {"input_data": [-1.0, 0.0, 0.0, 0.0]}  # the worker refuses this one
    async with gateway(settings) as client:
        jobs = [(await client.post("/jobs", json={"task": "batch_predict", "inputs": [row]})).json()["job_id"]
                for row in rows]
        async with sidecar(settings):
            statuses = await asyncio.gather(*(wait_for_job(client, job, finished) for job in jobs))
        assert [s["status"] for s in statuses] == ["failed" if i == 7 else "succeeded" for i in range(30)]
        assert statuses[7]["error"]["code"] == "invalid_input" and statuses[7]["attempts"] == 1
        for i, job in enumerate(jobs):
            if i != 7:
                output = (await client.get(f"/jobs/{job}/result")).json()["output"]
                assert [answer["prediction"] for answer in output] == [[sum(rows[i]["input_data"])]]
    assert fake_worker.rows_seen == 29
    assert fake_worker.calls < 29  # one call per job would be 29


async def test_a_worker_5xx_to_a_shared_call_retries_each_job_of_it(
    jobs_settings: JobsSettings, fake_worker: FakeWorker
) -> None:
    settings = jobs_settings.model_copy(update={"job_chunk_rows": 64, "sidecar_worker_calls": 1})
    fake_worker.failures = 1
    rows = [{"input_data": [float(i), 1.0, 1.0, 1.0]} for i in range(6)]
    async with gateway(settings) as client:
        jobs = [(await client.post("/jobs", json={"task": "batch_predict", "inputs": [row]})).json()["job_id"]
                for row in rows]
        async with sidecar(settings):
            statuses = await asyncio.gather(*(wait_for_job(client, job, finished) for job in jobs))
        assert [s["status"] for s in statuses] == ["succeeded"] * 6
        assert max(s["attempts"] for s in statuses) == 2  # the jobs of the call that got the 503 ran again
        for i, job in enumerate(jobs):
            output = (await client.get(f"/jobs/{job}/result")).json()["output"]
            assert [answer["prediction"] for answer in output] == [[sum(rows[i]["input_data"])]]
    assert fake_worker.failures == 0 and fake_worker.rows_seen == 6
