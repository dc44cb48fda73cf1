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


def test_another_method_on_a_protocol_route_is_405_in_the_protocol_s_body(client: TestClient) -> None:
    response = client.request("TRACE", "/v2/models/m/infer")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
    assert response.json() == {"error": "Method Not Allowed"} and response.headers["x-request-id"]


def test_paths_under_gateway_are_never_proxied(client: TestClient) -> None:
    response = client.post("/gateway/anything")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/predict", "/predict/", "/batch_predict"])
def test_the_workers_json_routes_are_proxied(client: TestClient, path: str) -> None:
    response = client.post(path, json={})
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker_available"


@pytest.mark.parametrize("path", ["/", "/health", "/metadata"])
def test_the_workers_other_routes_are_proxied(client: TestClient, path: str) -> None:
    assert client.get(path).json()["error"]["code"] == "no_worker_available"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v2"), ("POST", "/v2/models/m/infer")])
def test_the_protocol_routes_are_proxied_whatever_the_content_type(client: TestClient, method: str,
                                                                   path: str) -> None:
    response = client.request(method, path, content=b"\x00\x01", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 503 and response.json() == {"error": "no healthy worker; try again shortly"}


@pytest.mark.parametrize("path", ["/admin", "/predictions", "/v2x", "/health/../admin", "/.env"])
def test_unknown_paths_are_404_without_a_worker(client: TestClient, path: str) -> None:
    response = client.get(path, headers={"x-request-id": "r2"})
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}, "request_id": "r2"}


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/predict", {}, b"{}"),
        ("/predict", {"content-type": "text/plain"}, b"{}"),
        ("/batch_predict", {"content-type": "application/x-www-form-urlencoded"}, b"a=1"),
        ("/jobs", {"content-type": "application/jsonp"}, b"{}"),
    ],
)
def test_json_routes_refuse_other_content_types_with_415(client: TestClient, path: str, headers: dict,
                                                          body: bytes) -> None:
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/ld+json"],
)
def test_json_content_types_pass(client: TestClient, content_type: str) -> None:
    response = client.post("/predict", content=b"{}", headers={"content-type": content_type})
    assert response.json()["error"]["code"] == "no_worker_available"
