"""Jobs are bound to a model: a queue per model name, refusal of another model's job, a worker that changes model.

A worker that changes only its version: tests/jobs/test_job_versions.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from jobs.database import create_database
from jobs.records import JobRecords, NewJob
from jobs.routing import MAX_MODEL_QUEUE_BYTES, ModelIdentity, dead_queue, model_queue
from jobs.schema import JobSpec
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from tests.jobs.conftest import broker_of, embedded_settings, finished, gateway, sidecar, wait_for_job
from tests.jobs.fake_worker import FAKE_MODEL, FakeWorker

ROWS = [{"input_data": [float(i), 1.0, 2.0, 3.0]} for i in range(4)]
#: One row per worker call, 0.2 s each (two at a time): seconds of work, to change the worker under.
LONG = ROWS * 5


@pytest.mark.parametrize("name", ["iris-bayes-logreg", "mlp_small", "MLP2"])
def test_a_plain_name_is_its_own_queue(name: str) -> None:
    assert model_queue("jobs", name) == f"jobs.{name}"
    assert dead_queue(model_queue("jobs", name)) == f"jobs.{name}.dead"


def test_every_name_gets_a_queue_of_its_own_that_fits_rabbitmq() -> None:
    names = ["a.dead", "a", "a b", "a_b", "a%20b", "a~b", "modèle", "模型", "", "x" * 300, "x" * 299 + "y", "é" * 200]
    queues = [model_queue("jobs", name) for name in names]
    assert len(set(queues)) == len(names)
    assert model_queue("jobs", "a.dead") != dead_queue(model_queue("jobs", "a"))
    for queue in queues:
        assert len(dead_queue(queue).encode()) <= 255 and len(queue.encode()) <= MAX_MODEL_QUEUE_BYTES
        assert queue.isascii() and queue.startswith("jobs.") and "." not in queue.removeprefix("jobs.")


def test_a_model_identity_reads_the_same_from_health_and_metadata() -> None:
    health = {"model_name": "m", "model_version": "2", "input_shape": [2, 3]}
    metadata = {"name": "m", "version": "2", "inputs": [{"name": "x", "shape": [-1, 2, 3]}]}
    assert ModelIdentity.from_health(health) == ModelIdentity.from_metadata(metadata) == ModelIdentity("m", "2", (2, 3))


async def test_no_job_is_accepted_before_a_worker_reports_its_model(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, "http://127.0.0.1:9")  # nothing listens there
    async with gateway(settings) as client:
        answer = await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "jobs_unavailable"
    assert "no worker has reported its model" in answer.json()["error"]["message"]


async def test_a_job_records_its_model_and_the_model_that_computed_it(jobs_settings: JobsSettings) -> None:
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS})).json()
        assert (job["model_name"], job["model_version"], job["input_shape"]) == (FAKE_MODEL, "1", [4])
        assert job["result_model_name"] is None
        status = await wait_for_job(client, job["job_id"], finished)
        assert status["status"] == "succeeded", status
        assert (status["result_model_name"], status["result_model_version"]) == (FAKE_MODEL, "1")
        result = (await client.get(status["result_url"])).json()
        assert (result["model_name"], result["model_version"]) == (FAKE_MODEL, "1")


async def _queue_bound_job(settings: JobsSettings, model_name: str, input_shape: tuple[int, ...]) -> str:
    """A job whose record names ``model_name`` and ``input_shape``, put on the fake model's queue (a misroute)."""
    database = create_database(settings)
    records = JobRecords(database, ArtifactStore.from_settings(settings), settings)
    spec = JobSpec(job_id="ab" * 16, task="batch_predict", fingerprint="f")
    await records.create(NewJob(spec, len(ROWS), orjson.dumps(ROWS), None, model_name, "1", input_shape))
    await database.close()
    async with broker_of(settings) as broker:
        await broker.publish(FAKE_MODEL, spec.model_dump_json().encode())
    return spec.job_id


@pytest.mark.parametrize(("model_name", "input_shape", "reason"), [
    ("another-model", (4,), "accepted for model 'another-model'"),
    (FAKE_MODEL, (3,), "checked against input shape [3]"),
])
async def test_a_job_for_another_model_is_refused_never_run_and_fails_with_the_reason(
    jobs_settings: JobsSettings, fake_worker: FakeWorker, model_name: str, input_shape: tuple[int, ...], reason: str,
) -> None:
    job_id = await _queue_bound_job(jobs_settings, model_name, input_shape)
    async with gateway(jobs_settings) as client, sidecar(jobs_settings):
        status = await wait_for_job(client, job_id, finished)
    assert status["status"] == "failed" and status["error"]["code"] == "model_mismatch", status
    assert reason in status["error"]["message"] and "refused without running it" in status["error"]["message"]
    assert status["attempts"] == jobs_settings.job_max_deliveries and status["result_model_name"] is None
    assert fake_worker.rows_seen == 0


@contextlib.asynccontextmanager
async def _two_workers() -> AsyncIterator[tuple[FakeWorker, FakeWorker]]:
    first, second = FakeWorker(), FakeWorker()
    first.model_name, second.model_name = "model-a", "model-b"
    first.start()
    second.start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


async def test_two_models_on_one_broker_each_run_only_their_own_jobs(jobs_settings: JobsSettings) -> None:
    async with _two_workers() as workers:
        settings = [jobs_settings.model_copy(update={"worker_url": worker.url}) for worker in workers]
        try:
            async with gateway(settings[0]) as first, gateway(settings[1]) as second, \
                    sidecar(settings[0]), sidecar(settings[1]):
                jobs = {client: [(await client.post("/jobs", json={"task": "batch_predict", "inputs": ROWS[:i]}))
                                 .json()["job_id"] for i in range(1, 5)] for client in (first, second)}
                for client, worker in zip((first, second), workers, strict=True):
                    for job_id in jobs[client]:
                        status = await wait_for_job(client, job_id, finished)
                        assert status["status"] == "succeeded", status
                        assert status["model_name"] == status["result_model_name"] == worker.model_name
            assert [worker.rows_seen for worker in workers] == [1 + 2 + 3 + 4] * 2
        finally:
            if jobs_settings.amqp_url:
                await _delete_queues_of(jobs_settings, "model-a", "model-b")


async def _delete_queues_of(settings: JobsSettings, *models: str) -> None:
    from jobs.broker_amqp import AmqpBroker

    broker = AmqpBroker(settings.amqp_url or "", settings.job_queue, settings.job_max_deliveries)
    await broker.start()
    await broker.delete_queues(*models)
    await broker.close()


async def test_a_worker_restarted_with_another_model_gets_none_of_the_old_model_s_jobs(
    tmp_path: Path, fake_worker: FakeWorker,
) -> None:
    settings = embedded_settings(tmp_path, fake_worker.url, job_chunk_rows=1, sidecar_model_check_s=0.1)
    fake_worker.delay_s = 0.2
    async with gateway(settings) as client, sidecar(settings) as running:
        job_id = (await client.post("/jobs", json={"task": "batch_predict", "inputs": LONG})).json()["job_id"]
        await wait_for_job(client, job_id, lambda status: status["progress"]["done"] >= 1)
        fake_worker.model_name = "other"
        status = await wait_for_job(client, job_id, lambda status: status["error"] is not None)
        assert status["status"] == "queued" and status["error"]["code"] == "model_changed", status
        await _wait(lambda: running.model is not None and running.model.name == "other")
        async with broker_of(settings) as broker:
            assert await broker.count(FAKE_MODEL) == 1  # handed back to its own model's queue, untouched
        fake_worker.model_name = FAKE_MODEL  # a worker of the job's model again
        status = await wait_for_job(client, job_id, finished)
    assert status["status"] == "succeeded" and status["result_model_name"] == FAKE_MODEL, status


async def _wait(condition, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


def test_the_fake_worker_names_its_model_in_every_answer(fake_worker: FakeWorker) -> None:
    answer = httpx.post(f"{fake_worker.url}/batch_predict", json=ROWS[:1])
    assert (answer.headers["x-model-name"], answer.headers["x-model-version"]) == (FAKE_MODEL, "1")
