"""X-Request-ID: a client's id is kept only when short and plain; anything else is replaced by a generated one."""

from __future__ import annotations

import httpx
import orjson
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from gateway.access_log import AccessLog
from gateway.app import create_app
from gateway.metrics import GatewayMetrics
from gateway.request_context import RequestContext, request_id_pattern, route_label
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.gateway.test_access_log import Records, logger_with


@pytest.fixture
def client(jobs_settings: JobsSettings):
    settings = GatewaySettings(workers=["127.0.0.1:9"], request_id_max_length=16)
    with TestClient(create_app(settings, jobs_settings)) as client:
        yield client


def returned_id(client: TestClient, header: bytes | None) -> str:
    headers = {b"x-request-id": header} if header is not None else {}
    return client.get("/gateway/health", headers=headers).headers["x-request-id"]


@pytest.mark.parametrize("given", [b"req-42", b"a.b_c:d-E9", b"x" * 16])
def test_a_plain_id_within_the_bound_is_kept(client: TestClient, given: bytes) -> None:
    assert returned_id(client, given) == given.decode()


@pytest.mark.parametrize(
    "given",
    [b"x" * 17, b"x" * 70_000, "caf\u00e9".encode(), "\u65e5\u672c".encode(), b"a b", b"a/b", b"<script>", b""],
)
def test_any_other_id_is_replaced_by_a_generated_one(client: TestClient, given: bytes) -> None:
    generated = returned_id(client, given)
    assert generated != given.decode("latin-1")
    assert generated.isascii() and generated.isalnum() and len(generated) <= 32


def test_generated_ids_are_unique(client: TestClient) -> None:
    assert len({returned_id(client, None) for _ in range(20)}) == 20


def test_the_id_is_in_the_error_envelope(client: TestClient) -> None:
    response = client.post("/gateway/health", headers={"x-request-id": "kept-1"})
    assert response.json()["request_id"] == "kept-1" == response.headers["x-request-id"]


@pytest.mark.parametrize("chars", ["a-z]|.*", "^a-z", "caf\u00e9", "z-a"])
def test_a_character_set_that_is_not_a_plain_class_is_refused(chars: str) -> None:
    with pytest.raises(ValidationError, match="REQUEST_ID_CHARS"):
        GatewaySettings(request_id_chars=chars)


def test_route_labels_stay_bounded() -> None:
    assert route_label("/predict") == "/predict"
    assert route_label("/jobs/abc/result") == "/jobs/{id}/result"
    assert route_label("/jobs/abc/retry") == "/jobs/{id}/retry"
    assert route_label("/" + "x" * 1000) == "other"


def test_model_routes_have_bounded_labels() -> None:
    assert route_label("/models/iris/predict") == "/models/{name}/predict"
    assert route_label("/models/iris/batch_predict/") == "/models/{name}/batch_predict"
    assert route_label("/models/iris/versions") == "/models/*"


async def test_the_access_log_line_names_the_model_and_version_that_answered() -> None:
    records = Records()
    access_log = AccessLog(flush_s=60, max_lines=1, logger=logger_with(records, "test.access.models"))
    access_log.open()

    async def worker_answer(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["backend"] = "http://w1"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"x-model-name", b"my%20model"),
                                (b"x-model-version", b"7")]})
        await send({"type": "http.response.body", "body": b"{}"})

    metrics = GatewayMetrics()
    app = RequestContext(worker_answer, metrics, request_id_pattern=request_id_pattern("A-Za-z0-9", 16),
                         access_log=access_log)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        assert (await client.post("/models/my%20model/predict", json={})).status_code == 200
    access_log.close()
    line = orjson.loads(records.messages[0])
    assert (line["model"], line["version"], line["worker"]) == ("my model", "7", "http://w1")
    assert metrics.model_requests.labels("my model", "200")._value.get() == 1
