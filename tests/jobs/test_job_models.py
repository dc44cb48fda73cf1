"""Jobs name their model: checked against that model's metadata, queued for its sidecars, computed by it.

The job service is given the served models as the gateway's pools publish them (``served_models``) and the
default model (``served_model``); two fake workers of two models, each with its own sidecar, compute the jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from jobs.broker_amqp import AmqpBroker
from jobs.errors import InvalidJob, JobsUnavailable
from jobs.schema import JobStatus
from jobs.service import JobService
from jobs.settings import JobsSettings
from tests.jobs.conftest import broker_of, embedded_settings, sidecar
from tests.jobs.fake_worker import FAKE_MODEL, FakeWorker

OTHER = "other-model"
#: The fake model's rows have 4 values; the other model's 2.
FAKE_ROWS = [{"input_data": [1.0, 2.0, 3.0, float(i)]} for i in range(3)]
OTHER_ROWS = [{"input_data": [10.0, float(i)]} for i in range(3)]


def metadata(name: str, size: int) -> dict[str, Any]:
    """A worker's /metadata, as the gateway keeps it per model."""
    return {"name": name, "version": "1", "inputs": [{"name": "input_data", "datatype": "FP32", "shape": [-1, size]}],
            "outputs": [], "example": {"input_data": [1.0] * size}}


SERVED: dict[str, dict[str, Any] | None] = {FAKE_MODEL: metadata(FAKE_MODEL, 4), OTHER: metadata(OTHER, 2)}


@pytest.fixture(scope="module")
def other_worker() -> Iterator[FakeWorker]:
    worker = FakeWorker(input_shape=(2,))
    worker.model_name = OTHER
    worker.start()
    yield worker
    worker.stop()


@contextlib.asynccontextmanager
async def job_service(settings: JobsSettings, served: dict[str, dict[str, Any] | None] | None = None,
                      default: str = FAKE_MODEL) -> AsyncIterator[JobService]:
    models = SERVED if served is None else served
    service = JobService.from_settings(settings, CollectorRegistry(), served_model=lambda: models.get(default),
                                       served_models=lambda: models)
    try:
        yield service
    finally:
        await service.close()


def body(**fields: Any) -> bytes:
    return orjson.dumps({"task": "batch_predict", **fields})


async def test_a_job_without_a_model_is_for_the_default_one(tmp_path: Path) -> None:
    async with job_service(embedded_settings(tmp_path, "http://127.0.0.1:9"), default=OTHER) as service:
        status = (await service.submit(body(inputs=OTHER_ROWS), None)).status
    assert (status.model_name, status.model_version, status.input_shape) == (OTHER, "1", [2])


async def test_rows_are_checked_against_the_named_models_input(tmp_path: Path) -> None:
    async with job_service(embedded_settings(tmp_path, "http://127.0.0.1:9")) as service:
        status = (await service.submit(body(model=OTHER, inputs=OTHER_ROWS), None)).status
        assert (status.model_name, status.input_shape) == (OTHER, [2])
        with pytest.raises(InvalidJob, match=r"inputs\[0\]"):  # the default model's rows, for the other model
            await service.submit(body(model=OTHER, inputs=FAKE_ROWS), None)


async def test_an_unknown_model_is_refused_naming_the_served_ones(tmp_path: Path) -> None:
    async with job_service(embedded_settings(tmp_path, "http://127.0.0.1:9")) as service:
        with pytest.raises(InvalidJob) as refused:
            await service.submit(body(model="nope", inputs=FAKE_ROWS), None)
        assert refused.value.message == f"model: no model 'nope' is served here; served: {FAKE_MODEL!r}, {OTHER!r}"
        with pytest.raises(InvalidJob, match=r"^jobs\[1\]: model: no model 'nope'"):
            await service.submit_many(orjson.dumps({"jobs": [
                {"task": "batch_predict", "inputs": FAKE_ROWS}, {"task": "batch_predict", "model": "nope"}]}))
        assert (await service.list())[0] == []  # nothing stored


async def test_a_model_whose_metadata_is_not_known_is_503(tmp_path: Path) -> None:
    served: dict[str, dict[str, Any] | None] = {FAKE_MODEL: SERVED[FAKE_MODEL], OTHER: None}
    async with job_service(embedded_settings(tmp_path, "http://127.0.0.1:9"), served) as service:
        with pytest.raises(JobsUnavailable, match=f"no healthy worker of model {OTHER!r}"):
            await service.submit(body(model=OTHER, inputs=OTHER_ROWS), None)
        with pytest.raises(JobsUnavailable, match=rf"^jobs\[1\]: no healthy worker of model {OTHER!r}"):
            await service.submit_many(orjson.dumps({"jobs": [
                {"task": "batch_predict", "inputs": FAKE_ROWS},
                {"task": "batch_predict", "model": OTHER, "inputs": OTHER_ROWS}]}))


async def test_an_empty_model_name_is_422(tmp_path: Path) -> None:
    async with job_service(embedded_settings(tmp_path, "http://127.0.0.1:9")) as service:
        with pytest.raises(InvalidJob, match="^model"):
            await service.submit(body(model="", inputs=FAKE_ROWS), None)


async def test_naming_the_default_model_is_a_different_request_for_an_idempotency_key(tmp_path: Path) -> None:
    """The fingerprint of a job that names no model is what it was before jobs named models."""
    async with job_service(embedded_settings(tmp_path, "http://127.0.0.1:9")) as service:
        first = await service.submit(body(inputs=FAKE_ROWS), "key-1")
        again = await service.submit(body(inputs=FAKE_ROWS), "key-1")
        assert again.replayed and again.status.job_id == first.status.job_id
        with pytest.raises(InvalidJob, match="already used for a different job"):
            await service.submit(body(model=OTHER, inputs=OTHER_ROWS), "key-1")


async def wait_finished(service: JobService, job_id: str, timeout_s: float = 30) -> JobStatus:
    async def poll() -> JobStatus:
        while not (status := await service.status(job_id)).finished:
            await asyncio.sleep(0.05)
        return status

    return await asyncio.wait_for(poll(), timeout_s)


async def test_each_model_computes_its_own_jobs(jobs_settings: JobsSettings, fake_worker: FakeWorker,
                                                other_worker: FakeWorker) -> None:
    other_settings = jobs_settings.model_copy(update={"worker_url": other_worker.url})
    try:
        async with job_service(jobs_settings) as service, sidecar(jobs_settings), sidecar(other_settings):
            batch = [{"task": "batch_predict", "model": OTHER, "inputs": OTHER_ROWS},
                     {"task": "batch_predict", "inputs": FAKE_ROWS},
                     {"task": "batch_predict", "model": FAKE_MODEL, "inputs": FAKE_ROWS}]
            submitted = await service.submit_many(orjson.dumps({"jobs": batch}))
            single = (await service.submit(body(model=OTHER, inputs=OTHER_ROWS), None)).status
            job_ids = [one.status.job_id for one in submitted] + [single.job_id]
            expected = [OTHER, FAKE_MODEL, FAKE_MODEL, OTHER]
            for job_id, model in zip(job_ids, expected, strict=True):
                status = await wait_finished(service, job_id)
                assert status.status == "succeeded", status
                assert (status.model_name, status.result_model_name, status.result_model_version) == (model, model, "1")
                result = orjson.loads(await service.result(job_id))
                rows = OTHER_ROWS if model == OTHER else FAKE_ROWS
                assert result["model_name"] == model
                assert [answer["prediction"] for answer in result["output"]] == [
                    [sum(row["input_data"])] for row in rows]
            listed, _ = await service.list(model=OTHER)
            assert sorted(status.job_id for status in listed) == sorted([job_ids[0], job_ids[3]])
    finally:
        async with broker_of(jobs_settings) as broker:
            if isinstance(broker, AmqpBroker):
                await broker.delete_queues(OTHER)
