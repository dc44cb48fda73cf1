"""A real gateway before stand-in workers of two models: each route answers from its own model's pool."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.model_headers import model_headers
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.fakes import GridModel, SumModel, metadata_of
from tests.gateway.conftest import serve_gateway
from tests.support import ServedApp

MODELS = {"sum": SumModel, "grid": GridModel}


class ModelWorker:
    """Serves one fake model's /health, /metadata, /predict, /batch_predict and OIP infer; its answers name the
    model. ``ready`` False: /health is 503 (a worker down); ``model`` can change (a restart with another model)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.ready = True
        self.calls: list[str] = []
        app = Starlette(routes=[
            Route("/health", self._health), Route("/metadata", self._metadata),
            Route("/predict", self._predict, methods=["POST"]), Route("/batch_predict", self._batch, methods=["POST"]),
            Route("/v2/models/{name}/infer", self._infer, methods=["POST"]),
        ])
        self._served = ServedApp(app, f"worker-{model}")
        self.port, self.address = self._served.port, self._served.address

    def _headers(self) -> dict[str, str]:
        return model_headers(self.model, "1")

    async def _health(self, request: Request) -> Response:
        body = {"status": "healthy" if self.ready else "loading", "worker_id": self.address,
                "model_name": self.model, "model_version": "1"}
        return JSONResponse(body, 200 if self.ready else 503)

    async def _metadata(self, request: Request) -> Response:
        return JSONResponse(metadata_of(MODELS[self.model]))

    def _answer(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"prediction": [self.model], "worker_id": self.address, "echo": row.get("input_data")}

    async def _predict(self, request: Request) -> Response:
        self.calls.append("/predict")
        return JSONResponse(self._answer(orjson.loads(await request.body())), headers=self._headers())

    async def _batch(self, request: Request) -> Response:
        self.calls.append("/batch_predict")
        rows = orjson.loads(await request.body())
        return JSONResponse([self._answer(row) for row in rows], headers=self._headers())

    async def _infer(self, request: Request) -> Response:
        self.calls.append(request.url.path)
        if request.path_params["name"] != self.model:
            return JSONResponse({"error": "another model"}, 404)
        return JSONResponse({"model_name": self.model, "model_version": "1", "outputs": []}, headers=self._headers())

    def __enter__(self) -> ModelWorker:
        self._served.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._served.stop()


@pytest.fixture
def workers() -> Iterator[list[ModelWorker]]:
    with ModelWorker("sum") as sum1, ModelWorker("grid") as grid1, ModelWorker("sum") as sum2:
        yield [sum1, grid1, sum2]


def settings_for(workers: list[ModelWorker], **overrides: Any) -> GatewaySettings:
    return GatewaySettings(workers=[worker.address for worker in workers], health_interval_s=0.05, access_log=False,
                           **overrides)


async def wait_for(client: httpx.AsyncClient, check: Any) -> dict[str, Any]:
    for _ in range(200):
        info = (await client.get("/gateway/info")).json()
        if check(info):
            return info
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {info}")


def both_pools_up(info: dict[str, Any]) -> bool:
    return {pool["model"]: pool["healthy"] for pool in info["pools"]} == {"sum": 2, "grid": 1}


@pytest.mark.parametrize("batching", [False, True])
async def test_each_route_answers_from_its_own_models_pool(workers: list[ModelWorker], jobs_settings: JobsSettings,
                                                           batching: bool) -> None:
    sum1, grid1, sum2 = workers
    async with serve_gateway(settings_for(workers, gateway_batching=batching), jobs_settings) as url, \
            httpx.AsyncClient(base_url=url) as client:
        info = await wait_for(client, both_pools_up)
        assert info["default_model"] == "sum"
        rows = {"sum": {"input_data": [1, 2, 3, 4]}, "grid": {"input_data": [[1, 2, 3], [4, 5, 6]]}}
        calls = [client.post(f"/models/{name}/predict", json=rows[name]) for name in ("sum", "grid") * 20]
        calls += [client.post("/predict", json=rows["sum"]) for _ in range(10)]
        answers = await asyncio.gather(*calls)
        for name, answer in zip(["sum", "grid"] * 20 + ["sum"] * 10, answers, strict=True):
            assert answer.status_code == 200 and answer.headers["x-model-name"] == name
            assert answer.json()["prediction"] == [name] and answer.json()["echo"] == rows[name]["input_data"]
        batch = await client.post("/models/grid/batch_predict", json=[rows["grid"]] * 3)
        assert [item["prediction"] for item in batch.json()] == [["grid"]] * 3
        assert {call for call in grid1.calls} <= {"/predict", "/batch_predict"} and len(grid1.calls) >= 2
        assert sum1.calls and sum2.calls  # the sum pool's two workers share its load
        infer = await client.post("/v2/models/grid/infer", json={"inputs": []})
        assert infer.status_code == 200 and infer.json()["model_name"] == "grid"
        metrics = (await client.get("/metrics")).text
    assert 'gateway_model_requests_total{model="grid",status="200"}' in metrics


async def test_an_unknown_model_is_404_listing_the_served_models(workers: list[ModelWorker],
                                                                 jobs_settings: JobsSettings) -> None:
    async with serve_gateway(settings_for(workers), jobs_settings) as url, httpx.AsyncClient(base_url=url) as client:
        await wait_for(client, both_pools_up)
        answer = await client.post("/models/nope/predict", json={"input_data": [1, 2, 3, 4]},
                                   headers={"x-request-id": "r1"})
        assert answer.status_code == 404 and answer.json()["request_id"] == "r1"
        assert answer.json()["error"]["code"] == "model_not_found"
        assert answer.json()["error"]["models"] == ["sum", "grid"]
        protocol = await client.post("/v2/models/nope/infer", json={"inputs": []})
        assert protocol.status_code == 404 and "sum, grid" in protocol.json()["error"]
        versions = await client.get("/models/nope/versions")
        assert versions.status_code == 404 and versions.json()["error"]["models"] == ["sum", "grid"]


async def test_a_model_whose_workers_are_all_down_is_503_alone(workers: list[ModelWorker],
                                                              jobs_settings: JobsSettings) -> None:
    sum1, grid1, sum2 = workers
    async with serve_gateway(settings_for(workers), jobs_settings) as url, httpx.AsyncClient(base_url=url) as client:
        await wait_for(client, both_pools_up)
        grid1.ready = False
        await wait_for(client, lambda info: {p["model"]: p["healthy"] for p in info["pools"]}["grid"] == 0)
        down = await client.post("/models/grid/predict", json={"input_data": [[1, 2, 3], [4, 5, 6]]})
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["error"]["code"] == "no_worker_available" and "'grid'" in down.json()["error"]["message"]
        for _ in range(10):
            assert (await client.post("/models/sum/predict", json={"input_data": [1, 2, 3, 4]})).status_code == 200
        grid1.ready = True
        await wait_for(client, both_pools_up)
        assert (await client.post("/models/grid/predict", json={"input_data": [[1, 2, 3], [4, 5, 6]]})).status_code \
            == 200


async def test_a_worker_restarted_with_another_model_moves_pools(workers: list[ModelWorker],
                                                                 jobs_settings: JobsSettings) -> None:
    sum1, grid1, sum2 = workers
    async with serve_gateway(settings_for(workers), jobs_settings) as url, httpx.AsyncClient(base_url=url) as client:
        await wait_for(client, both_pools_up)
        sum2.model = "grid"
        info = await wait_for(client, lambda info: {p["model"]: p["workers"] for p in info["pools"]}
                              == {"sum": 1, "grid": 2})
        assert {p["model"]: p["backends"] for p in info["pools"]}["grid"] == [f"http://{grid1.address}",
                                                                                 f"http://{sum2.address}"]
        sum2.calls.clear()
        for _ in range(6):
            answer = await client.post("/models/grid/predict", json={"input_data": [[1, 2, 3], [4, 5, 6]]})
            assert answer.headers["x-model-name"] == "grid"
        assert sum2.calls


async def test_default_model_and_the_models_listing(workers: list[ModelWorker], jobs_settings: JobsSettings) -> None:
    async with serve_gateway(settings_for(workers, default_model="grid"), jobs_settings) as url, \
            httpx.AsyncClient(base_url=url) as client:
        await wait_for(client, both_pools_up)
        answer = await client.post("/predict", json={"input_data": [[1, 2, 3], [4, 5, 6]]})
        assert answer.headers["x-model-name"] == "grid"
        listed = {model["name"]: model for model in (await client.get("/models")).json()["models"]}
        assert {name: (m["workers"], m["healthy"], m["default"]) for name, m in listed.items()} == {
            "sum": (2, 2, False), "grid": (1, 1, True)}


async def test_the_document_has_each_models_own_paths(workers: list[ModelWorker], jobs_settings: JobsSettings) -> None:
    async with serve_gateway(settings_for(workers), jobs_settings) as url, httpx.AsyncClient(base_url=url) as client:
        await wait_for(client, both_pools_up)
        for _ in range(100):
            document = (await client.get("/openapi.json")).json()
            if "/models/grid/predict" in document["paths"] and "/models/sum/predict" in document["paths"]:
                break
            await asyncio.sleep(0.02)
    validate(document)
    schemas = document["components"]["schemas"]
    for name, model in MODELS.items():
        metadata = metadata_of(model)
        body = document["paths"][f"/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert body["example"] == metadata["example"]
        schema = schemas[body["schema"]["$ref"].rsplit("/", 1)[-1]]
        assert schema["properties"]["input_data"] == metadata["schemas"]["request"]["properties"]["input_data"]
        assert f"/models/{name}/batch_predict" in document["paths"]
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert infer["parameters"][0]["schema"]["enum"] == ["sum", "grid"]
    default = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert default["example"] == metadata_of(SumModel)["example"]
