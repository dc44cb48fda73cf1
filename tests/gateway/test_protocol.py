"""The gateway's Open Inference Protocol routes: its own health, proxying with the protocol's errors, the docs."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from gateway.app import build_document, create_app
from gateway.request_context import route_label
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.fakes import GridModel, metadata_of


@pytest.fixture
def client(jobs_settings: JobsSettings):
    # No worker answers: whatever is proxied gets 503.
    settings = GatewaySettings(workers=["127.0.0.1:9"], max_body_bytes=100)
    with TestClient(create_app(settings, jobs_settings)) as client:
        yield client


def test_liveness_is_the_gateway_s_and_readiness_needs_a_healthy_worker(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v2"), ("GET", "/v2/models/any"), ("GET", "/v2/models/any/ready"),
    ("POST", "/v2/models/any/infer"), ("POST", "/v2/models/any/versions/1/infer"),
])
def test_v2_paths_are_proxied_and_errors_are_the_protocol_body(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, headers={"x-request-id": "r9"})
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.headers["x-request-id"] == "r9"
    assert response.json() == {"error": "no healthy worker; try again shortly"}


def test_a_body_over_the_limit_is_413_in_the_protocol_body(client: TestClient) -> None:
    response = client.post("/v2/models/any/infer", content=b"x" * 200)
    assert response.status_code == 413 and "limit is 100" in response.json()["error"]


def test_the_gateway_s_own_v2_paths_are_not_proxied(client: TestClient) -> None:
    response = client.post("/v2/health/live")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def test_v2_metrics_labels_are_bounded() -> None:
    assert route_label("/v2/models/abc/infer") == "/v2/models/{name}/infer"
    assert route_label("/v2/models/abc/versions/7/ready") == "/v2/models/{name}/ready"
    assert route_label("/v2/models/abc") == "/v2/models/{name}"
    assert route_label("/v2/health/ready") == "/v2/health/ready"


def test_the_document_has_the_protocol_routes_for_the_served_model() -> None:
    generic = build_document(None)
    validate(generic)
    assert "post" in generic["paths"]["/v2/models/{model_name}/infer"]
    document = build_document(metadata_of(GridModel))
    validate(document)
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert infer["parameters"][0]["schema"]["example"] == "grid"
    assert infer["requestBody"]["content"]["application/json"]["example"] == {"inputs": [
        {"name": "input_data", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/versions/{version}/ready"):
        assert "get" in document["paths"][path], path
