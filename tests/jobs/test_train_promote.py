"""train -> register -> promote: a train job registers its output as the model's next version, and with
"promote": true waits for a gateway to activate it.

The model is the regression example (its fit is a few lines of numpy), named by a stand-in worker's
/metadata as a real worker names its class; the gateway's side of a promotion is played by a stand-in
taker on the registry (take_promotion, set_serving, finish_promotion). Jobs are submitted through the job
service itself, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import JSONResponse

from jobs.errors import InvalidJob
from jobs.registry import Promotion, Registry
from jobs.service import JobService
from jobs.settings import JobsSettings
from jobs.store import ArtifactStore
from tests.jobs.conftest import embedded_settings, sidecar
from tests.jobs.fake_worker import FakeWorker

MODEL_NAME = "bayes-linreg"


class RegressionWorker(FakeWorker):
    """A stand-in worker that names the regression example as its model, as a real worker's /metadata does."""

    def __init__(self) -> None:
        super().__init__(input_shape=(3,))
        self.model_name = MODEL_NAME

    async def _metadata(self, request: Request) -> JSONResponse:
        return JSONResponse(self.metadata(), headers=self._identity())

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.model_name, "version": self.model_version, "model_class":
            "worker.examples.regression:BayesianLinearRegression",
            "inputs": [{"name": "input_data", "datatype": "FP32", "shape": [-1, 3]}], "outputs": [],
            "training": {"target": {"shape": [], "datatype": "FP32"}, "default_data": True,
                         "options_schema": {"type": "object"}},
            "example": {"input_data": [0.5, -1.0, 2.0]},
        }


@pytest.fixture(scope="module")
def regression_worker() -> Iterator[RegressionWorker]:
    worker = RegressionWorker().start()
    yield worker
    worker.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, regression_worker: RegressionWorker) -> JobsSettings:
    database_url = request.getfixturevalue("database_url") if request.param == "postgres" else None
    return embedded_settings(tmp_path, regression_worker.url, database_url=database_url,
                             promotion_timeout_s=20.0, promotion_poll_s=0.05)


@contextlib.asynccontextmanager
async def job_service(settings: JobsSettings, worker: RegressionWorker) -> AsyncIterator[JobService]:
    service = JobService.from_settings(settings, CollectorRegistry(), served_model=worker.metadata)
    try:
        yield service
    finally:
        await service.close()


async def run_job(service: JobService, body: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    """Submit ``body`` and wait for its job to finish: its status, with the result's output when it succeeded."""
    submitted = await service.submit(orjson.dumps(body), None)
    job_id = submitted.status.job_id

    async def finished() -> dict[str, Any]:
        while not (status := await service.status(job_id)).finished:
            await asyncio.sleep(0.05)
        answer = status.model_dump(mode="json")
        if status.status == "succeeded":
            answer["output"] = orjson.loads(await service.result(job_id))["output"]
        return answer

    return await asyncio.wait_for(finished(), timeout_s)


@contextlib.asynccontextmanager
async def taker(registry: Registry, decide: Callable[[Promotion], Awaitable[str | None]]) -> AsyncIterator[None]:
    """A stand-in for the gateway's side: takes each promotion, records ``decide``'s outcome (None: activated)."""
    async def take() -> None:
        while True:
            promotion = await registry.take_promotion()
            if promotion is None:
                await asyncio.sleep(0.05)
                continue
            await registry.finish_promotion(promotion.job_id, await decide(promotion))

    taking = asyncio.create_task(take())
    try:
        yield
    finally:
        taking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await taking


async def activate(registry: Registry, promotion: Promotion) -> None:
    current = await registry.serving(promotion.model_name)
    await registry.set_serving(promotion.model_name, active=promotion.version, canary=None, canary_traffic=0,
                               loaded=True, expected_generation=current.generation if current else None,
                               by_key=None, action="promote")


async def test_a_train_job_registers_its_output_as_the_next_version_not_active(
        settings: JobsSettings, regression_worker: RegressionWorker) -> None:
    registry = Registry.from_settings(settings)
    try:
        await registry.register(MODEL_NAME, {"params.npz": b"shipped"}, source="shipped")
        async with job_service(settings, regression_worker) as service, sidecar(settings):
            status = await run_job(service, {"task": "train"})
        assert status["status"] == "succeeded", status
        output = status["output"]
        assert output["model_name"] == MODEL_NAME and output["version"] == "2" and output["rows"] == 200
        assert output["trained_from_version"] == "1" and "promoted" not in output
        manifest = await registry.manifest(MODEL_NAME, "2")
        assert (manifest.source, manifest.job_id, manifest.trained_from) == ("train", status["job_id"], "1")
        assert manifest.metrics["rows"] == 200 and output["files"] == [entry.name for entry in manifest.files]
        files = await registry.files(MODEL_NAME, "2")  # every file checks out against the manifest
        assert set(files) == set(output["files"]) and all(files.values())
        store = ArtifactStore.from_settings(settings)
        assert output["artifact_uri"] == store.uri_for_key(f"models/{MODEL_NAME}/2/")
        assert await registry.serving(MODEL_NAME) is None  # registered, not activated
    finally:
        await registry.close()


async def test_promote_true_waits_for_the_activation_and_says_it_happened(
        settings: JobsSettings, regression_worker: RegressionWorker) -> None:
    registry = Registry.from_settings(settings)
    taken: list[Promotion] = []

    async def activated(promotion: Promotion) -> None:
        taken.append(promotion)
        await activate(registry, promotion)

    try:
        async with (job_service(settings, regression_worker) as service, sidecar(settings),
                    taker(registry, lambda p: activated(p))):
            status = await run_job(service, {"task": "train", "promote": True})
        assert status["status"] == "succeeded", status
        output = status["output"]
        assert (output["version"], output["promoted"], output["promotion_error"]) == ("1", True, None)
        assert [(p.job_id, p.model_name, p.version) for p in taken] == [(status["job_id"], MODEL_NAME, "1")]
        serving = await registry.serving(MODEL_NAME)
        assert serving is not None and serving.active == "1"
        assert (await registry.history(MODEL_NAME))[0].action == "promote"
    finally:
        await registry.close()


async def test_a_promotion_the_gateway_refuses_leaves_the_job_succeeded_with_the_reason(
        settings: JobsSettings, regression_worker: RegressionWorker) -> None:
    registry = Registry.from_settings(settings)

    async def refused(promotion: Promotion) -> str:
        return f"worker 127.0.0.1:8001 refused version {promotion.version}: outputs are not finite"

    try:
        async with (job_service(settings, regression_worker) as service, sidecar(settings),
                    taker(registry, refused)):
            status = await run_job(service, {"task": "train", "promote": True})
        assert status["status"] == "succeeded", status
        output = status["output"]
        assert output["promoted"] is False
        assert output["promotion_error"] == "worker 127.0.0.1:8001 refused version 1: outputs are not finite"
        assert [v.version for v in await registry.versions(MODEL_NAME)] == ["1"]
        assert await registry.serving(MODEL_NAME) is None
    finally:
        await registry.close()


async def test_a_promotion_nobody_takes_is_withdrawn_after_the_timeout(
        settings: JobsSettings, regression_worker: RegressionWorker) -> None:
    settings = settings.model_copy(update={"promotion_timeout_s": 0.5})
    registry = Registry.from_settings(settings)
    try:
        async with job_service(settings, regression_worker) as service, sidecar(settings):
            status = await run_job(service, {"task": "train", "promote": True})
        assert status["status"] == "succeeded", status
        output = status["output"]
        assert output["promoted"] is False
        assert output["promotion_error"] == ("no gateway took the promotion within 0.5 s (PROMOTION_TIMEOUT_S); "
                                             "the version is registered, not active")
        assert await registry.take_promotion() is None  # a gateway coming later does not activate it behind its back
    finally:
        await registry.close()


async def test_promote_is_refused_for_a_task_that_makes_no_version(settings: JobsSettings,
                                                                   regression_worker: RegressionWorker) -> None:
    async with job_service(settings, regression_worker) as service:
        body = {"task": "batch_predict", "inputs": [{"input_data": [1.0, 2.0, 3.0]}], "promote": True}
        with pytest.raises(InvalidJob, match="promote: task 'batch_predict' makes no model version to promote"):
            await service.submit(orjson.dumps(body), None)


async def test_an_attempt_after_one_that_registered_takes_that_version_and_still_promotes(
        settings: JobsSettings, regression_worker: RegressionWorker) -> None:
    """An attempt that registered its version and died before finishing: the next attempt neither fits nor
    registers again, and the job's record still says to promote (it is the record a retry runs from)."""
    registry = Registry.from_settings(settings)
    try:
        async with job_service(settings, regression_worker) as service:
            submitted = await service.submit(orjson.dumps({"task": "train", "promote": True}), None)
            job_id = submitted.status.job_id
            record = await service.records.get(job_id)
            assert record is not None and record.spec.promote is True
            earlier = await registry.register(MODEL_NAME, {"params.npz": b"an earlier attempt's"}, source="train",
                                              job_id=job_id, trained_from="1", metrics={"rows": 7})
            assert earlier is not None
            async with sidecar(settings), taker(registry, lambda p: activate(registry, p)):
                while not (status := await service.status(job_id)).finished:
                    await asyncio.sleep(0.05)
            output = orjson.loads(await service.result(job_id))["output"]
        assert status.status == "succeeded"
        assert (output["version"], output["rows"], output["promoted"]) == (earlier.version, 7, True)
        assert [v.version for v in await registry.versions(MODEL_NAME)] == [earlier.version]
    finally:
        await registry.close()
