"""Small jobs share worker calls, and each still gets exactly its own answers or its own error."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from jobs.settings import JobsSettings
from tests.jobs.conftest import finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FakeWorker


def _shared_calls(settings: JobsSettings) -> JobsSettings:
    """One call in flight, up to 64 rows: the jobs waiting meanwhile share the next call."""
    return settings.model_copy(update={"job_chunk_rows": 64, "sidecar_worker_calls": 1})


async def _run_one_row_jobs(client: httpx.AsyncClient, settings: JobsSettings,
                            rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """A job per row, all queued before a sidecar starts: their ids and final statuses."""
    jobs = [(await client.post("/jobs", json={"task": "batch_predict", "inputs": [row]})).json()["job_id"]
            for row in rows]
    async with sidecar(settings):
        statuses = await asyncio.gather(*(wait_for_job(client, job, finished) for job in jobs))
    return jobs, statuses


async def _assert_own_answer(client: httpx.AsyncClient, job: str, row: dict[str, Any]) -> None:
    output = (await client.get(f"/jobs/{job}/result")).json()["output"]
    assert [answer["prediction"] for answer in output] == [[sum(row["input_data"])]]


async def test_one_row_jobs_share_worker_calls_and_a_bad_row_fails_only_its_job(
    jobs_settings: JobsSettings, fake_worker: FakeWorker
) -> None:
    settings = _shared_calls(jobs_settings)
    fake_worker.delay_s = 0.05
    rows = [{"input_data": [float(i), 1.0, 1.0, 1.0]} for i in range(30)]
    rows[7] = {"input_data": [-1.0, 0.0, 0.0, 0.0]}  # the worker refuses this one
    async with gateway(settings) as client:
        jobs, statuses = await _run_one_row_jobs(client, settings, rows)
        assert [s["status"] for s in statuses] == ["failed" if i == 7 else "succeeded" for i in range(30)]
        assert statuses[7]["error"]["code"] == "invalid_input" and statuses[7]["attempts"] == 1
        for i, job in enumerate(jobs):
            if i != 7:
                await _assert_own_answer(client, job, rows[i])
    assert fake_worker.rows_seen == 29
    assert fake_worker.calls < 29  # one call per job would be 29


async def test_a_worker_5xx_to_a_shared_call_retries_each_job_of_it(
    jobs_settings: JobsSettings, fake_worker: FakeWorker
) -> None:
    settings = _shared_calls(jobs_settings)
    fake_worker.failures = 1
    rows = [{"input_data": [float(i), 1.0, 1.0, 1.0]} for i in range(6)]
    async with gateway(settings) as client:
        jobs, statuses = await _run_one_row_jobs(client, settings, rows)
        assert [s["status"] for s in statuses] == ["succeeded"] * 6
        assert max(s["attempts"] for s in statuses) == 2  # the jobs of the call that got the 503 ran again
        for job, row in zip(jobs, rows, strict=True):
            await _assert_own_answer(client, job, row)
    assert fake_worker.failures == 0 and fake_worker.rows_seen == 6
