"""The OpenAPI document is valid and documents every route with schemas and examples."""

from __future__ import annotations

from openapi_spec_validator import validate
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings


def fetch_document() -> dict:
    with TestClient(create_app(GatewaySettings(workers=["127.0.0.1:9"]))) as client:
        return client.get("/openapi.json").json()


def test_the_document_is_valid_openapi() -> None:
    validate(fetch_document())


def test_prediction_routes_have_schemas_and_examples() -> None:
    paths = fetch_document()["paths"]
    for path in ("/predict", "/batch_predict"):
        operation = paths[path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["example"]
        assert "200" in operation["responses"] and "422" in operation["responses"]
    for path in ("/health", "/", "/gateway/health", "/gateway/info", "/metrics"):
        assert "get" in paths[path], path
