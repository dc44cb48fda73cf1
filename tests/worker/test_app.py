"""The worker's HTTP API with a fake runtime: validation, readiness, errors, no JAX needed."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from common.draining import Drain
from tests.fakes import SumModel, traced_outputs
from worker.app import create_app
from worker.contract import ContractError, TensorSpec
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings


class FakeRuntime:
    """Sums each row; warm-up waits for the test to open ``warm``."""

    def __init__(self) -> None:
        self.model = SumModel()
        self.device = "fake:0"
        self.warm = threading.Event()
        self.fail = False
        self.load_error: Exception | None = None

    def load_and_warm_up(self) -> tuple[TensorSpec, ...]:
        self.warm.wait(10)
        if self.load_error is not None:
            raise self.load_error
        return traced_outputs(SumModel)

    def load_version(self, folder: Any) -> SimpleNamespace:
        """Any version of the sum model sums (what worker/runtime.py's LoadedParams holds, without JAX)."""
        return SimpleNamespace(params={}, outputs=traced_outputs(SumModel), compilations=0)

    def infer_with(self, params: Any) -> Any:
        return self.infer

    def release_start_params(self) -> None:
        """Nothing to free: the sum needs no parameters."""

    def infer(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        if self.fail:
            raise RuntimeError("device lost")
        with np.errstate(over="ignore"):
            return {"total": rows.sum(axis=1, keepdims=True)}


def make_client(runtime: FakeRuntime, on_failure: Any = None, **settings: Any) -> TestClient:
    config = WorkerSettings(worker_id="w7", max_rows_per_request=5, max_body_bytes=2000, **settings)
    return TestClient(create_app(config, runtime, WorkerMetrics(config.max_batch_size), on_failure))


@pytest.fixture
def client() -> Iterator[TestClient]:
    runtime = FakeRuntime()
    runtime.warm.set()
    with make_client(runtime) as client:
        client.runtime = runtime  # type: ignore[attr-defined]
        yield client


def wait_ready(client: TestClient) -> None:
    for _ in range(200):
        if client.get("/health").status_code == 200:
            return
        threading.Event().wait(0.01)
    raise AssertionError("worker never became ready")


@contextlib.contextmanager
def ready_client() -> Iterator[TestClient]:
    """A client of the app on a warm fake runtime, once its /health is 200."""
    runtime = FakeRuntime()
    runtime.warm.set()
    with make_client(runtime) as client:
        wait_ready(client)
        yield client


def test_health_is_503_until_warm_then_200() -> None:
    runtime = FakeRuntime()
    with make_client(runtime) as client:
        cold = client.get("/health")
        assert cold.status_code == 503 and cold.json()["model_loaded"] is False
        refused = client.post("/predict", json={"input_data": [1, 2, 3, 4]})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        assert refused.headers["retry-after"]
        runtime.warm.set()
        wait_ready(client)
        health = client.get("/health").json()
        assert health | {"pid": 0} == health | {
            "status": "healthy", "worker_id": "w7", "model_name": "sum", "model_version": "3",
            "device": "fake:0", "pid": 0,
        }


def test_predict_and_batch_predict(client: TestClient) -> None:
    wait_ready(client)
    one = client.post("/predict", json={"input_data": [1, 2, 3, 4]}, headers={"X-Request-ID": "abc"})
    assert one.status_code == 200 and one.headers["x-request-id"] == "abc"
    assert one.json()["prediction"] == [10.0] and one.json()["worker_id"] == "w7"
    many = client.post("/batch_predict", json=[{"input_data": [i, 0, 0, 0]} for i in range(5)])
    assert [answer["prediction"] for answer in many.json()] == [[float(i)] for i in range(5)]
    assert client.post("/batch_predict", json=[]).json() == []


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b'{"input_data": [1, 2', 400, "malformed_json", "not valid JSON"),
        (b'{"input_data": [1, 2, 3]}', 422, "invalid_input", "input_data: expected shape (4,), got (3,)"),
        (b'{"input_data": [[1, 2, 3, 4]]}', 422, "invalid_input", "input_data: expected shape (4,), got (1, 4)"),
        (b'{"input_data": 1}', 422, "invalid_input", "input_data: expected shape (4,), got ()"),
        (b'{"input_data": [1, 2, 3, "4"]}', 422, "invalid_input", "input_data[3]: Input should be a valid number"),
        (b'{"input_data": [1, 2, 3, true]}', 422, "invalid_input", "input_data[3]"),
        (b'{"input_data": [1, 2, 3, 1e39]}', 422, "invalid_input", "overflow float32"),
        (b'{"input_data": [1, 2, 3, NaN]}', 422, "invalid_input", "non-finite numbers are refused"),
        (b'{"input_data": [1, 2, 3, -Infinity]}', 422, "invalid_input", "non-finite numbers are refused"),
        (b'{"input_data": [1, 2, 3, NaN}', 400, "malformed_json", "not valid JSON"),
        (b'{"input_data": [1, 2, 3, 4], "extra": 1}', 422, "invalid_input", "extra"),
        (b'{"input_data": [1, 2, 3, 4], "return_probabilities": "yes"}', 422, "invalid_input",
         "return_probabilities"),
        (b'{"inputs": [1, 2, 3, 4]}', 422, "invalid_input", "input_data: Field required"),
        (b"[1, 2, 3, 4]", 422, "invalid_input", "body"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client: TestClient, body: bytes, status: int, code: str,
                                    message: str) -> None:
    wait_ready(client)
    response = client.post("/predict", content=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert message in response.json()["error"]["message"]


def test_batch_errors_name_the_item(client: TestClient) -> None:
    wait_ready(client)
    response = client.post("/batch_predict", json=[{"input_data": [1, 2, 3, 4]}, {"input_data": [1, "x", 3, 4]}])
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("[1].input_data[1]")


def test_limits_answer_413(client: TestClient) -> None:
    wait_ready(client)
    too_many = client.post("/batch_predict", json=[{"input_data": [1, 2, 3, 4]}] * 6)
    assert too_many.status_code == 413 and "limit is 5" in too_many.json()["error"]["message"]
    too_big = client.post("/predict", content=b" " * 3000)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"


def test_a_failing_model_call_is_a_500_in_the_envelope(client: TestClient) -> None:
    wait_ready(client)
    client.runtime.fail = True  # type: ignore[attr-defined]
    response = client.post("/predict", json={"input_data": [1, 2, 3, 4]})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "batch_failed"
    assert "device lost" in response.json()["error"]["message"]


def test_unknown_routes_get_the_json_envelope(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/predict").status_code == 405


def test_index_and_metrics(client: TestClient) -> None:
    wait_ready(client)
    client.post("/predict", json={"input_data": [1, 2, 3, 4]})
    assert client.get("/").json()["worker_id"] == "w7"
    text = client.get("/metrics").text
    assert 'worker_requests_total{route="/predict",status="200"} 1.0' in text
    assert "worker_batch_size_bucket" in text


def test_metadata_is_published_once_ready() -> None:
    runtime = FakeRuntime()
    with make_client(runtime) as client:
        assert client.get("/metadata").status_code == 503
        runtime.warm.set()
        wait_ready(client)
        metadata = client.get("/metadata").json()
    assert metadata["name"] == "sum" and metadata["versions"] == ["3"]
    assert metadata["inputs"] == [{"name": "input_data", "datatype": "FP32", "shape": [-1, 4],
                                   "description": "One input row."}]
    assert metadata["outputs"] == [{"name": "total", "datatype": "FP32", "shape": [-1, 1],
                                    "description": "The sum of the row."}]
    assert metadata["example"] == {"input_data": [0.0, 0.0, 0.0, 0.0], "return_probabilities": True}
    assert metadata["training"] is None and metadata["model_class"] == "tests.fakes:SumModel"
    request = metadata["schemas"]["request"]["properties"]["input_data"]
    assert (request["minItems"], request["maxItems"]) == (4, 4)


def test_a_model_that_fails_to_load_says_why_and_asks_to_exit(caplog: pytest.LogCaptureFixture) -> None:
    runtime = FakeRuntime()
    runtime.load_error = ContractError(SumModel, "load", "failed on /nowhere: FileNotFoundError: params.npz")
    failed = threading.Event()
    with make_client(runtime, on_failure=lambda error: failed.set()) as client:
        runtime.warm.set()
        assert failed.wait(10)
        health = client.get("/health")
        refused = client.post("/predict", json={"input_data": [1, 2, 3, 4]})
    assert health.status_code == 503
    assert health.json()["status"] == "failed" and "FileNotFoundError: params.npz" in health.json()["error"]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "start_failed"
    assert "model 'sum' (tests.fakes:SumModel): load: failed" in refused.json()["error"]["message"]
    assert any(record.exc_info for record in caplog.records)  # the traceback is in the log


def test_non_finite_outputs_are_a_clear_error_never_nulls(client: TestClient) -> None:
    wait_ready(client)
    response = client.post("/predict", json={"input_data": [3e38, 3e38, 0, 0]})
    assert response.status_code == 422
    assert "output 'total' is not finite" in response.json()["error"]["message"]
    many = client.post("/batch_predict", json=[{"input_data": [1, 2, 3, 4]}, {"input_data": [3e38, 3e38, 0, 0]}])
    assert many.status_code == 422 and many.json()["error"]["message"].startswith("row 1:")


def test_an_integer_beyond_an_integer_input_dtype_is_a_422_not_a_500() -> None:
    runtime = FakeRuntime()
    runtime.model = type("IntSum", (SumModel,), {"input_dtype": "int32"})()
    runtime.warm.set()
    with make_client(runtime) as client:
        wait_ready(client)
        response = client.post("/predict", json={"input_data": [1e300, 1, 2, 3]})
    assert response.status_code == 422 and "overflow int32" in response.json()["error"]["message"]


def test_a_405_names_the_allowed_methods_and_v2_errors_use_the_protocol_body(client: TestClient) -> None:
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_a_client_that_leaves_mid_body_is_not_an_error_of_the_worker(client: TestClient,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    wait_ready(client)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "root_path": "", "state": {}}
    messages = [{"type": "http.request", "body": b'{"input_data": [1, 2', "more_body": True},
                {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
    assert sent[0]["status"] == 499
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
    assert 'worker_requests_total{route="/predict",status="499"} 1.0' in client.get("/metrics").text


def test_while_draining_health_is_503_draining_and_predictions_are_still_served() -> None:
    runtime, drain = FakeRuntime(), Drain()
    runtime.warm.set()
    config = WorkerSettings(worker_id="w7")
    with TestClient(create_app(config, runtime, WorkerMetrics(config.max_batch_size), drain=drain)) as client:
        wait_ready(client)
        drain.active = True
        health = client.get("/health")
        predicted = client.post("/predict", json={"input_data": [1, 2, 3, 4]})
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert health.json()["model_loaded"] is True
    assert predicted.status_code == 200


def test_every_answer_names_the_model_that_computed_it(client: TestClient) -> None:
    wait_ready(client)
    answers = [client.post("/predict", json={"input_data": [1, 2, 3, 4]}),
               client.post("/batch_predict", json=[{"input_data": [1, 2]}]), client.get("/metadata")]
    assert [answer.status_code for answer in answers] == [200, 422, 200]
    for answer in answers:
        assert (answer.headers["x-model-name"], answer.headers["x-model-version"]) == (SumModel.name, SumModel.version)
