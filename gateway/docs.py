"""The OpenAPI document of the whole API and the pages that render it.

Swagger UI and ReDoc are served from assets installed with the project (the
``fastapi-standalone-docs`` distribution ships both), never from a CDN: a
deployment may have no internet. The document is built from the pydantic
schemas the workers and the job API validate with.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from worker.schemas import IRIS_EXAMPLE, ErrorResponse, PredictRequest, PredictResponse, WorkerHealth

REF = "#/components/schemas/{model}"


def _assets_dir() -> Path:
    # Located without importing the package: importing it would import FastAPI.
    spec = importlib.util.find_spec("fastapi_standalone_docs")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-standalone-docs is not installed; it ships the docs assets")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


class OpenAPIBuilder:
    """Collects paths and component schemas into one OpenAPI 3.1 document."""

    def __init__(self, title: str, version: str, description: str) -> None:
        self.document: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version, "description": description},
            "paths": {},
            "components": {"schemas": {}},
        }

    def schema(self, annotation: Any) -> dict[str, Any]:
        """A ``$ref`` (or inline schema) for a type, registering its definitions."""
        schema = TypeAdapter(annotation).json_schema(ref_template=REF)
        self.document["components"]["schemas"].update(schema.pop("$defs", {}))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            self.document["components"]["schemas"][annotation.__name__] = schema
            return {"$ref": REF.format(model=annotation.__name__)}
        return schema

    def add(self, path: str, method: str, operation: dict[str, Any]) -> None:
        self.document["paths"].setdefault(path, {})[method] = operation

    def json_body(self, annotation: Any, example: Any = None) -> dict[str, Any]:
        content: dict[str, Any] = {"schema": self.schema(annotation)}
        if example is not None:
            content["example"] = example
        return {"required": True, "content": {"application/json": content}}

    def responses(self, ok: Any, *errors: int, ok_status: int = 200, ok_example: Any = None) -> dict:
        ok_content: dict[str, Any] = {"schema": self.schema(ok)}
        if ok_example is not None:
            ok_content["example"] = ok_example
        answers: dict[str, Any] = {str(ok_status): {"description": "OK", "content": {"application/json": ok_content}}}
        error_ref = {"application/json": {"schema": self.schema(ErrorResponse)}}
        for status in errors:
            answers[str(status)] = {"description": _ERROR_TEXT[status], "content": error_ref}
        return answers


_ERROR_TEXT = {
    400: "Malformed JSON",
    404: "Not found",
    409: "Not finished yet",
    413: "Body or row count over the limit",
    422: "Invalid input (the message names the field)",
    502: "Workers failed on every attempt",
    503: "No healthy worker, or overloaded (Retry-After)",
    504: "No answer within the request timeout",
}
_PROXY_ERRORS = (400, 413, 422, 502, 503, 504)


class GatewayHealth(BaseModel):
    status: str
    alive_backends: int
    total_backends: int


class BackendInfo(BaseModel):
    url: str
    source: str
    state: str
    in_flight: int
    last_probe: float | None
    last_error: str | None
    worker_id: str | None
    model_name: str | None
    model_version: str | None
    device: str | None


class GatewayInfo(BaseModel):
    name: str
    version: str
    total_backends: int
    backends: list[BackendInfo]


def prediction_api(builder: OpenAPIBuilder) -> None:
    builder.add("/predict", "post", {
        "summary": "Predict one row",
        "tags": ["prediction"],
        "requestBody": builder.json_body(PredictRequest, IRIS_EXAMPLE),
        "responses": builder.responses(PredictResponse, *_PROXY_ERRORS),
    })
    builder.add("/batch_predict", "post", {
        "summary": "Predict many rows; answers are in request order",
        "tags": ["prediction"],
        "requestBody": builder.json_body(list[PredictRequest], [IRIS_EXAMPLE, {"input_data": [6.7, 3.0, 5.2, 2.3]}]),
        "responses": builder.responses(list[PredictResponse], *_PROXY_ERRORS),
    })
    builder.add("/health", "get", {
        "summary": "Health of the worker that answers (503 until its model is warm)",
        "tags": ["worker"],
        "responses": builder.responses(WorkerHealth, 503),
    })
    builder.add("/", "get", {
        "summary": "Short information from the worker that answers",
        "tags": ["worker"],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}},
    })
    builder.add("/gateway/health", "get", {
        "summary": "healthy (all workers up), degraded (some) or unhealthy (none, 503)",
        "tags": ["gateway"],
        "responses": {
            "200": {"description": "At least one worker is healthy",
                    "content": {"application/json": {"schema": builder.schema(GatewayHealth),
                                "example": {"status": "healthy", "alive_backends": 2, "total_backends": 2}}}},
            "503": {"description": "No worker is healthy",
                    "content": {"application/json": {"schema": builder.schema(GatewayHealth)}}},
        },
    })
    builder.add("/gateway/info", "get", {
        "summary": "The gateway and the state of each worker",
        "tags": ["gateway"],
        "responses": builder.responses(GatewayInfo),
    })
    builder.add("/metrics", "get", {
        "summary": "Prometheus metrics of the gateway",
        "tags": ["gateway"],
        "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    })


_SWAGGER_PAGE = """<!doctype html>
<html><head><title>{title}</title><meta charset="utf-8">
<link rel="stylesheet" href="/docs/assets/swagger/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>"""

_REDOC_PAGE = """<!doctype html>
<html><head><title>{title}</title><meta charset="utf-8"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/docs/assets/redoc/redoc.standalone.js"></script></body></html>"""


def docs_routes(document: dict[str, Any]) -> list[BaseRoute]:
    title = document["info"]["title"]

    async def openapi(request: Any) -> Response:
        return JSONResponse(document)

    async def swagger(request: Any) -> Response:
        return HTMLResponse(_SWAGGER_PAGE.format(title=title))

    async def redoc(request: Any) -> Response:
        return HTMLResponse(_REDOC_PAGE.format(title=title))

    return [
        Route("/openapi.json", openapi, include_in_schema=False),
        Route("/docs", swagger, include_in_schema=False),
        Route("/redoc", redoc, include_in_schema=False),
        Mount("/docs/assets", StaticFiles(directory=_assets_dir()), name="docs-assets"),
    ]
