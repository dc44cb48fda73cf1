"""Three models of different input shapes behind one real gateway: every answer from its own model.

Real worker processes (MODEL=... each) and ``python -m gateway`` listing them all in WORKERS, with gateway
batching on. Under concurrent load on the three, each route's answers carry its model's X-Model-Name and the
numbers that model's own worker gives for the row; killing every worker of one model leaves the others at 0
failed requests while that model answers 503 with Retry-After, until its worker is back; tritonclient infers
on each model through the one gateway.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import (
    JAX_CACHE_DIR,
    free_port,
    http_ok,
    same_answer,
    start_process,
    stop_process,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

#: Input shapes (4,), (3,) and (8, 8): a row of one can never pass for a row of another.
MODELS = ("worker.examples.iris:IrisBayesianLogReg", "worker.examples.regression:BayesianLinearRegression",
          "worker.examples.digits:DigitsCNN")
#: What differs between two answers to the same row.
VOLATILE = ("worker_id", "inference_time_ms")


@dataclass
class Worker:
    model: str  # the import path
    port: int
    log: Path
    process: Any = None
    name: str = ""  # the model name its /health reports
    metadata: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = start_process([sys.executable, "-m", "worker"], worker_env(self.port, MODEL=self.model),
                                     self.log)

    def wait(self) -> None:
        wait_until(lambda: http_ok(f"{self.url}/health") or self.process.poll() is not None, 180, self.model)
        assert self.process.poll() is None, self.log.read_text()


@dataclass
class Stack:
    gateway: str
    workers: dict[str, Worker]  # by model name


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("several-models")
    workers = [Worker(model, free_port(), folder / f"worker-{index}.log") for index, model in enumerate(MODELS)]
    gateway_port = free_port()
    gateway = None
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait()
            worker.metadata = httpx.get(f"{worker.url}/metadata").json()
            worker.name = worker.metadata["name"]
        env = {"HOST": "127.0.0.1", "PORT": str(gateway_port), "WORKERS": ",".join(f"127.0.0.1:{w.port}"
                                                                                   for w in workers),
               "HEALTH_INTERVAL_S": "0.2", "GATEWAY_BATCHING": "true", "ACCESS_LOG": "false",
               "JOBS_DIR": str(folder / "jobs"), "JAX_CACHE_DIR": str(JAX_CACHE_DIR)}
        gateway_log = folder / "gateway.log"
        gateway = start_process([sys.executable, "-m", "gateway"], env, gateway_log)
        url = f"http://127.0.0.1:{gateway_port}"

        def all_pools_up() -> bool:
            try:
                pools = httpx.get(f"{url}/gateway/info").json()["pools"]
            except (httpx.HTTPError, ValueError, KeyError):
                return gateway.poll() is not None
            return sorted(pool["healthy"] for pool in pools) == [1, 1, 1]

        wait_until(all_pools_up, 60, "the gateway's three pools")
        assert gateway.poll() is None, gateway_log.read_text()
        yield Stack(url, {worker.name: worker for worker in workers})
    finally:
        if gateway is not None:
            stop_process(gateway)
        for worker in workers:
            if worker.process is not None:
                stop_process(worker.process)


def rows_of(metadata: dict[str, Any], count: int) -> list[Any]:
    """``count`` different rows of the model's input: its example, scaled."""
    example = np.asarray(metadata["example"]["input_data"], dtype=float)
    return [(example * (1 + index / 10)).round(3).tolist() for index in range(count)]


def stable(answer: Any) -> Any:
    if isinstance(answer, list):
        return [stable(item) for item in answer]
    return {key: value for key, value in answer.items() if key not in VOLATILE}


def test_gateway_info_and_models_list_the_three_pools(stack: Stack) -> None:
    info = httpx.get(f"{stack.gateway}/gateway/info").json()
    assert {pool["model"] for pool in info["pools"]} == set(stack.workers)
    assert info["default_model"] == next(iter(stack.workers))
    listed = {model["name"]: model for model in httpx.get(f"{stack.gateway}/models").json()["models"]}
    for name in stack.workers:
        assert (listed[name]["workers"], listed[name]["healthy"]) == (1, 1)
    document = httpx.get(f"{stack.gateway}/openapi.json").json()
    for name, worker in stack.workers.items():
        body = document["paths"][f"/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert body["example"] == worker.metadata["example"]


async def test_concurrent_load_on_three_models_gets_no_answer_from_the_wrong_model(stack: Stack) -> None:
    rows = {name: rows_of(worker.metadata, 8) for name, worker in stack.workers.items()}
    async with httpx.AsyncClient(timeout=60) as client:
        expected = {}
        for name, worker in stack.workers.items():  # each model's own numbers, from its worker directly
            direct = await client.post(f"{worker.url}/batch_predict", json=[{"input_data": row} for row in rows[name]])
            assert direct.status_code == 200, direct.text
            expected[name] = stable(direct.json())
        calls, wanted = [], []
        for _ in range(6):
            for name in stack.workers:
                for index, row in enumerate(rows[name]):
                    calls.append(client.post(f"{stack.gateway}/models/{name}/predict", json={"input_data": row}))
                    wanted.append((name, expected[name][index]))
                calls.append(client.post(f"{stack.gateway}/models/{name}/batch_predict",
                                         json=[{"input_data": row} for row in rows[name]]))
                wanted.append((name, expected[name]))
        answers = await asyncio.gather(*calls)
    wrong = [(name, answer.status_code, answer.headers.get("x-model-name"), answer.text[:200])
             for (name, want), answer in zip(wanted, answers, strict=True)
             if answer.status_code != 200 or answer.headers.get("x-model-name") != name
             or not same_answer(stable(answer.json()), want)]
    assert wrong == [], f"{len(wrong)} of {len(answers)} answers were not their model's: {wrong[:3]}"


async def test_killing_one_models_workers_fails_nothing_else_and_it_is_503_until_back(stack: Stack) -> None:
    names = list(stack.workers)
    victim, others = names[1], names[0::2]
    rows = {name: {"input_data": rows_of(stack.workers[name].metadata, 1)[0]} for name in names}
    worker = stack.workers[victim]
    outcomes: dict[str, list[httpx.Response]] = {name: [] for name in names}
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:

        async def load(name: str, seconds: float) -> None:
            until = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < until:
                outcomes[name].append(await client.post(f"/models/{name}/predict", json=rows[name]))

        loaders = [asyncio.create_task(load(name, 4.0)) for name in others for _ in range(4)]
        await asyncio.sleep(0.5)
        stop_process(worker.process)
        await asyncio.sleep(0.5)  # the requests that were in flight are retried, then 503: none is another model's
        down = [await client.post(f"/models/{victim}/predict", json=rows[victim]) for _ in range(5)]
        await asyncio.gather(*loaders)
        for answer in down:
            assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
            assert answer.json()["error"]["code"] == "no_worker_available"
        for name in others:
            statuses = [answer.status_code for answer in outcomes[name]]
            assert statuses and set(statuses) == {200}, (name, statuses)
            assert {answer.headers["x-model-name"] for answer in outcomes[name]} == {name}
        worker.start()
        await asyncio.to_thread(worker.wait)
        for _ in range(100):
            back = await client.post(f"/models/{victim}/predict", json=rows[victim])
            if back.status_code == 200:
                break
            assert back.status_code == 503
            await asyncio.sleep(0.2)
        assert back.status_code == 200 and back.headers["x-model-name"] == victim


def test_tritonclient_infers_on_each_model_through_the_one_gateway(stack: Stack) -> None:
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the dev extra) is not installed")
    from tritonclient.utils import triton_to_np_dtype

    through = httpclient.InferenceServerClient(stack.gateway.removeprefix("http://"))
    try:
        for name, worker in stack.workers.items():
            direct = httpclient.InferenceServerClient(worker.url.removeprefix("http://"))
            [tensor] = worker.metadata["inputs"]
            rows = np.asarray(rows_of(worker.metadata, 3), dtype=triton_to_np_dtype(tensor["datatype"]))
            given = httpclient.InferInput(tensor["name"], list(rows.shape), tensor["datatype"])
            given.set_data_from_numpy(rows)
            answer = through.infer(name, [given])
            assert answer.get_response()["model_name"] == name
            mine = direct.infer(name, [given])
            direct.close()
            for output in worker.metadata["outputs"]:
                np.testing.assert_allclose(answer.as_numpy(output["name"]), mine.as_numpy(output["name"]),
                                           rtol=1e-5, atol=1e-6)
    finally:
        through.close()
