"""Every shipped model, and the README's own snippet, served end to end through the gateway.

For each: the OpenAPI document describes that model's input shape and its example answers 200;
``/predict``, ``/batch_predict`` and a ``batch_predict`` job return the same numbers; a wrong shape
gets 422 naming the expected shape. And a model whose ``load()`` raises stops its worker with the
cause in the log and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.exit_codes import MODEL_BROKEN, MODEL_BROKEN_LINE
from tests.support import (
    JAX_CACHE_DIR,
    REPO,
    free_port,
    free_port_run,
    start_process,
    stop_process,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration

MODELS = [
    "worker.examples.iris:IrisBayesianLogReg",
    "worker.examples.mlp:SmallMLP",
    "worker.examples.regression:BayesianLinearRegression",
    "worker.examples.digits:DigitsCNN",
    "worker.examples.hourly:HourlyLoad",
    "readme_model",  # the README's "Serve your own model" snippet, exactly as written
]


def readme_snippet() -> str:
    section = (REPO / "README.md").read_text().split("## Serve your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@contextlib.contextmanager
def launched_stacks(models: list[str], folder: Path, env: dict[str, str] | None = None,
                    jobs_dir: bool = True) -> Iterator[list[str]]:
    """``python -m launcher`` per model, one worker and its sidecar each, on free ports, started together from
    ``folder``; yields their URLs once all are ready.

    A worker's port is its gateway's plus one. Each stack has JOBS_DIR ``folder/jobs-<i>``, or with
    ``jobs_dir=False`` the launcher's default (``.run/<port>/jobs`` in ``folder``).
    """
    (folder / "readme_model.py").write_text(readme_snippet())
    ports: list[int] = []
    while len(ports) < len(models):
        port = free_port_run(2)
        if all(abs(port - other) > 1 for other in ports):  # a gateway's and its worker's ports: no overlap
            ports.append(port)
    # The README's model is in folder; a model of the user's own may be on their PYTHONPATH.
    python_path = os.pathsep.join([str(folder), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    launchers = []
    try:
        for i, (model, port) in enumerate(zip(models, ports, strict=True)):
            stack_env = {"MODEL": model, "PYTHONPATH": python_path, "JAX_CACHE_DIR": str(JAX_CACHE_DIR),
                         "JOBS_DIR": str(folder / f"jobs-{i}") if jobs_dir else "", "HEALTH_INTERVAL_S": "0.5",
                         "MAX_BATCH_SIZE": "8", **(env or {})}
            log = folder / f"launcher-{i}.log"
            argv = [sys.executable, "-m", "launcher", "--workers", "1", "--port", str(port)]
            launchers.append((start_process(argv, stack_env, log, cwd=folder), log))
        for launcher, log in launchers:
            wait_until(lambda p=launcher, f=log: p.poll() is not None or "ready in" in f.read_text(), 180, "the stack")
            assert launcher.poll() is None, log.read_text()
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for launcher, _ in launchers:
            stop_process(launcher, timeout_s=20)


@contextlib.contextmanager
def launched_stack(model: str, folder: Path) -> Iterator[str]:
    """One stack of ``launched_stacks``; yields its URL."""
    with launched_stacks([model], folder) as [url]:
        yield url


@pytest.fixture(scope="module", params=MODELS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with launched_stack(request.param, tmp_path_factory.mktemp("model")) as url:
        yield url


def shape_in_schema(schema: dict) -> list[int]:
    """The fixed list lengths of nested ``input_data``: its shape as the document states it."""
    shape = []
    while schema.get("type") == "array":
        assert schema["minItems"] == schema["maxItems"]
        shape.append(schema["minItems"])
        schema = schema["items"]
    return shape


def numbers(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key not in ("worker_id", "inference_time_ms")}


def test_the_docs_describe_the_served_model_and_its_example_answers(served: str) -> None:
    metadata = httpx.get(f"{served}/metadata").json()
    document = httpx.get(f"{served}/openapi.json").json()
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    request = document["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert shape_in_schema(request["properties"]["input_data"]) == metadata["inputs"][0]["shape"][1:]
    response = document["components"]["schemas"]["PredictResponse"]
    assert "prediction" in response["properties"]
    assert body["example"] == metadata["example"]
    assert httpx.post(f"{served}/predict", json=body["example"]).status_code == 200


async def test_predict_batch_predict_and_a_job_give_the_same_numbers(served: str) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        example = (await client.get("/metadata")).json()["example"]
        one = (await client.post("/predict", json=example)).json()
        [batched] = (await client.post("/batch_predict", json=[example])).json()
        job = (await client.post("/jobs", json={"task": "batch_predict", "inputs": [example]})).json()
        deadline = time.monotonic() + 60
        while (status := (await client.get(f"/jobs/{job['job_id']}")).json())["status"] not in (
                "succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert status["status"] == "succeeded", status
        [from_job] = (await client.get(status["result_url"])).json()["output"]
    assert numbers(one) == numbers(batched) == numbers(from_job)


def test_a_wrong_shape_gets_422_naming_the_expected_shape(served: str) -> None:
    metadata = httpx.get(f"{served}/metadata").json()
    expected = tuple(metadata["inputs"][0]["shape"][1:])
    for path, body in [("/predict", {"input_data": [[1.0]]}), ("/batch_predict", [{"input_data": [[1.0]]}])]:
        answer = httpx.post(f"{served}{path}", json=body)
        assert answer.status_code == 422
        assert f"expected shape {expected}, got (1, 1)" in answer.json()["error"]["message"]
    job = httpx.post(f"{served}/jobs", json={"task": "batch_predict", "inputs": [{"input_data": [[1.0]]}]})
    assert job.status_code == 422 and f"expected shape {expected}" in job.json()["error"]["message"]


def test_a_model_whose_load_raises_stops_its_worker_saying_why(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    env = worker_env(port, MODEL="tests.integration.broken_model:MissingWeights", FAILED_EXIT_DELAY_S="5")
    worker = start_process([sys.executable, "-m", "worker"], env, log)
    try:
        health = wait_until(lambda: _health(port), 60, "/health to answer")
        assert health.status_code == 503
        failed = wait_until(lambda: (h := _health(port)) is not None and h.json()["status"] == "failed" and h,
                            60, "the failure to show")
        assert "weights.safetensors: no such file" in failed.json()["error"]
        assert worker.wait(60) == MODEL_BROKEN  # no restart would help: the launcher stops at it
    finally:
        stop_process(worker)
    text = log.read_text()
    assert "Traceback" in text and "model missing-weights failed to start" in text
    last = text.strip().splitlines()[-1]
    assert (MODEL_BROKEN_LINE + "model 'missing-weights' (tests.integration.broken_model:MissingWeights): load: failed"
            in last), last


def _health(port: int) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    except httpx.HTTPError:
        return None
