"""Methods and paths: the gateway's own paths are never proxied, every 405 says what is allowed."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings


@pytest.fixture
def client(jobs_settings: JobsSettings):
    # No worker answers: a request that were proxied would get 503 no_worker_available.
    with TestClient(create_app(GatewaySettings(workers=["127.0.0.1:9"]), jobs_settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/gateway/health", "GET, HEAD"),
        ("DELETE", "/gateway/info", "GET, HEAD"),
        ("PUT", "/metrics", "GET, HEAD"),
        ("POST", "/docs", "GET, HEAD"),
        ("POST", "/openapi.json", "GET, HEAD"),
        ("PUT", "/jobs", "GET, HEAD, POST"),
        ("POST", "/jobs/abc", "DELETE, GET, HEAD"),
        ("TRACE", "/predict", "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
        ("TRACE", "/gateway/health", "GET, HEAD"),
    ],
)
def test_other_methods_on_a_path_are_405_with_allow(client: TestClient, method: str, path: str, allow: str) -> None:
    response = client.request(method, path, headers={"x-request-id": "r1"})
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json() == {
        "error": {"code": "method_not_allowed", "message": "Method Not Allowed"}, "request_id": "r1",
    }


def test_paths_under_gateway_are_never_proxied(client: TestClient) -> None:
    response = client.post("/gateway/anything")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_other_paths_are_proxied(client: TestClient) -> None:
    response = client.post("/predict")
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker_available"
