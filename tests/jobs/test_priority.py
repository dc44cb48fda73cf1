"""A higher-priority job overtakes queued lower ones; priorities outside the levels are refused."""

from __future__ import annotations

import asyncio
from datetime import datetime

import aio_pika
import pytest

from jobs.settings import JobsSettings
from tests.jobs.conftest import finished, gateway, sidecar, wait_for_job

ROW = {"input_data": [1.0, 2.0, 3.0, 4.0]}


async def _rabbitmq_major(url: str) -> int:
    connection = await aio_pika.connect(url)
    try:
        version = connection.transport.connection.server_properties["version"]
        return int((version.decode() if isinstance(version, bytes) else version).split(".")[0])
    finally:
        await connection.close()


async def test_a_high_priority_job_overtakes_queued_low_ones(jobs_settings: JobsSettings) -> None:
    if jobs_settings.amqp_url and await _rabbitmq_major(jobs_settings.amqp_url) < 4:
        pytest.skip("RabbitMQ before 4.0: quorum queues have no priorities (the jobs still run, in order)")
    settings = jobs_settings.model_copy(update={"job_priority_levels": 3, "sidecar_prefetch": 1,
                                                "sidecar_concurrency": 1})
    async with gateway(settings) as client:
        low = [(await client.post("/jobs", json={"task": "batch_predict", "inputs": [ROW]})).json()["job_id"]
               for _ in range(4)]
        high = await client.post("/jobs", json={"task": "batch_predict", "inputs": [ROW], "priority": 2})
        assert high.status_code == 202 and high.json()["priority"] == 2
        async with sidecar(settings):
            jobs = [high.json()["job_id"], *low]
            statuses = await asyncio.gather(*(wait_for_job(client, job, finished) for job in jobs))
    assert all(status["status"] == "succeeded" for status in statuses)
    first, *rest = (datetime.fromisoformat(status["started_at"]) for status in statuses)
    assert all(first < started for started in rest)


@pytest.mark.parametrize("priority", [-1, 2, "high"])
async def test_a_priority_outside_the_levels_is_422(jobs_settings: JobsSettings, priority: object) -> None:
    async with gateway(jobs_settings) as client:
        answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": [ROW], "priority": priority})
        assert answer.status_code == 422 and answer.json()["error"]["message"].startswith("priority")
