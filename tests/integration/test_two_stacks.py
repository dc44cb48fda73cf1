"""Two stacks side by side, serving different models: every job is answered by its own stack's model.

The bug this guards against: two ``make run`` stacks in one checkout shared the embedded queue, and one
stack's jobs came back with the other model's answers, marked succeeded. Here two launchers (one worker and its
sidecar each) run from one folder: on the embedded broker with the launcher's default job folders, and
on RabbitMQ with one broker, one JOB_QUEUE prefix and one PostgreSQL database of records, so they truly
share them. The two models take rows of
the same shape, so a job that reached the wrong stack would succeed with the wrong numbers.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.broker_amqp import AmqpBroker
from tests.integration.test_models import launched_stacks, numbers
from tests.jobs.conftest import amqp_url, database_url, postgres_server  # noqa: F401 - fixtures (skip if absent)
from tests.support import rows_near, same_answer

pytestmark = pytest.mark.integration

MODELS = ["worker.examples.iris:IrisBayesianLogReg", "worker.examples.mlp:SmallMLP"]
JOBS_PER_STACK = 6


async def _jobs_answer_as_their_own_stack(url: str) -> str:
    """Submit JOBS_PER_STACK jobs and check each against the stack's own /batch_predict; the model's name."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        metadata = (await client.get("/metadata")).raise_for_status().json()
        example = metadata["example"]
        rows = [{**example, "input_data": row} for row in rows_near(metadata, JOBS_PER_STACK + 1)]
        expected = (await client.post("/batch_predict", json=rows)).raise_for_status().json()
        jobs = []
        for i in range(JOBS_PER_STACK):
            submitted = await client.post("/jobs", json={"task": "batch_predict", "inputs": rows[i:i + 2]})
            assert submitted.status_code == 202, submitted.text
            jobs.append((submitted.json()["job_id"], expected[i:i + 2]))
        for job_id, answers in jobs:
            status = await _finished(client, job_id)
            assert status["status"] == "succeeded", status
            assert status["model_name"] == status["result_model_name"] == metadata["name"], status
            assert status["result_model_version"] == metadata["version"]
            result = (await client.get(status["result_url"])).json()
            assert result["model_name"] == metadata["name"]
            assert all(same_answer(numbers(got), numbers(want)) for got, want in zip(result["output"], answers,
                                                                                 strict=True)), (result, answers)
    return metadata["name"]


async def _finished(client: httpx.AsyncClient, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while (status := (await client.get(f"/jobs/{job_id}")).json())["status"] in ("queued", "running"):
            await asyncio.sleep(0.1)
        return status

    return await asyncio.wait_for(poll(), timeout_s)


async def _both(urls: list[str]) -> list[str]:
    return list(await asyncio.gather(*(_jobs_answer_as_their_own_stack(url) for url in urls)))


def test_two_stacks_in_one_folder_on_the_embedded_broker(tmp_path: Path) -> None:
    with launched_stacks(MODELS, tmp_path, jobs_dir=False) as urls:
        names = asyncio.run(_both(urls))
        for url in urls:  # each stack made its own job folder, named after its gateway's port
            assert (tmp_path / ".run" / url.rsplit(":", 1)[1] / "jobs" / "broker.sqlite3").is_file()
    assert len(set(names)) == 2


def test_two_stacks_on_one_rabbitmq_one_queue_prefix_and_one_database(
    tmp_path: Path, amqp_url: str, database_url: str,  # noqa: F811
) -> None:
    prefix = f"test-two-stacks-{uuid.uuid4().hex[:12]}"
    shared = {"AMQP_URL": amqp_url, "JOB_QUEUE": prefix, "DATABASE_URL": database_url}
    names: list[str] = []
    try:
        with launched_stacks(MODELS, tmp_path, shared, jobs_dir=False) as urls:
            names = [httpx.get(f"{url}/metadata").json()["name"] for url in urls]
            assert asyncio.run(_both(urls)) == names
    finally:
        asyncio.run(_delete_queues(amqp_url, prefix, names))


async def _delete_queues(url: str, prefix: str, models: list[str]) -> None:
    broker = AmqpBroker(url, prefix, 3)
    await broker.start()
    await broker.delete_queues(*models)
    await broker.close()
