"""The OpenAPI document: valid, generic before any worker reports, then exactly the served model's."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate
from starlette.testclient import TestClient

from gateway.app import build_document, create_app
from gateway.docs import LiveDocument
from gateway.settings import GatewaySettings
from tests.fakes import GridModel, metadata_of


def fetch_document() -> dict:
    with TestClient(create_app(GatewaySettings(workers=["127.0.0.1:9"]))) as client:
        return client.get("/openapi.json").json()


def test_before_any_worker_reports_the_document_is_generic_and_valid() -> None:
    document = fetch_document()
    validate(document)
    operation = document["paths"]["/predict"]["post"]
    assert "No worker has reported" in operation["description"]
    assert "example" not in operation["requestBody"]["content"]["application/json"]
    for path in ("/health", "/metadata", "/", "/gateway/health", "/gateway/info", "/metrics"):
        assert "get" in document["paths"][path], path


def request_schema(document: dict[str, Any]) -> dict[str, Any]:
    ref = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def test_the_document_describes_the_served_model_exactly() -> None:
    metadata = metadata_of(GridModel)
    document = build_document(metadata)
    validate(document)
    input_data = request_schema(document)["properties"]["input_data"]
    assert (input_data["minItems"], input_data["maxItems"]) == (2, 2)
    assert (input_data["items"]["minItems"], input_data["items"]["maxItems"]) == (3, 3)
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == metadata["example"]
    response = document["components"]["schemas"]["PredictResponse"]
    assert {"prediction", "spread", "worker_id", "inference_time_ms"} <= set(response["properties"])
    jobs_example = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert jobs_example["inputs"] == [metadata["example"]]


def test_the_live_document_follows_the_model_and_is_rebuilt_only_when_it_changes() -> None:
    served: list[dict[str, Any] | None] = [None]
    builds: list[Any] = []

    def build(model: dict[str, Any] | None) -> dict[str, Any]:
        builds.append(model and model["version"])
        return build_document(model)

    live = LiveDocument(build, lambda: served[0])
    assert "No worker" in live.current()["paths"]["/predict"]["post"]["description"]
    served[0] = metadata_of(GridModel)
    first = live.current()
    assert live.current() is first
    served[0] = {**metadata_of(GridModel), "version": "2"}
    assert "version 2" in live.current()["paths"]["/predict"]["post"]["description"]
    assert builds == [None, "1", "2"]
