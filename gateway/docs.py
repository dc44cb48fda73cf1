"""The OpenAPI document of the whole API and the pages that render it.

Swagger UI and ReDoc are served from assets installed with the project (the
``fastapi-standalone-docs`` distribution ships both), never from a CDN: a
deployment may have no internet.

The prediction routes are documented from the metadata the served model's
workers publish (``GET /metadata``: exact input shape, the model's outputs and
example): the document is rebuilt when a served model changes. ``/predict`` and
``/batch_predict`` document the default model; with several models each gets its
own ``/models/{name}/predict`` and ``/models/{name}/batch_predict`` paths, with its
own schemas (components prefixed by the model's name) and example. Before any
worker has reported, the routes are documented generically. Nothing here
imports the worker.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from common.envelope import ErrorResponse
from common.rows import PredictRow
from gateway.auth import OPEN_PATHS

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

    def json_schema(self, name: str, schema: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """Register a JSON schema (as a worker publishes it) under ``prefix + name``, its definitions under
        ``prefix`` too (two models' definitions may share a name); return its ``$ref``."""
        schema = dict(schema)
        for def_name, definition in schema.pop("$defs", {}).items():
            self.document["components"]["schemas"][prefix + def_name] = _local_refs(definition, prefix)
        self.document["components"]["schemas"][prefix + name] = _local_refs(schema, prefix)
        return {"$ref": REF.format(model=prefix + name)}

    def add(self, path: str, method: str, operation: dict[str, Any]) -> None:
        self.document["paths"].setdefault(path, {})[method] = operation

    def json_body(self, schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
        content: dict[str, Any] = {"schema": schema}
        if example is not None:
            content["example"] = example
        return {"required": True, "content": {"application/json": content}}

    def responses(self, ok: Any, *errors: int, ok_status: int = 200, ok_example: Any = None) -> dict:
        ok_content: dict[str, Any] = {"schema": ok if isinstance(ok, dict) else self.schema(ok)}
        if ok_example is not None:
            ok_content["example"] = ok_example
        answers: dict[str, Any] = {str(ok_status): {"description": "OK", "content": {"application/json": ok_content}}}
        error_ref = {"application/json": {"schema": self.schema(ErrorResponse)}}
        for status in errors:
            answers[str(status)] = {"description": ERROR_TEXT[status], "content": error_ref}
        return answers


def _local_refs(schema: Any, prefix: str = "") -> Any:
    """Point a JSON schema's ``#/$defs/X`` references at the document's components (``prefix`` + X)."""
    if isinstance(schema, dict):
        return {key: (REF.format(model=prefix + value.rsplit("/", 1)[-1]) if key == "$ref" and isinstance(value, str)
                      and value.startswith("#/$defs/") else _local_refs(value, prefix))
                for key, value in schema.items()}
    if isinstance(schema, list):
        return [_local_refs(item, prefix) for item in schema]
    return schema


def component_prefix(model_name: str) -> str:
    """A model's prefix for its component names (which allow only ``A-Za-z0-9._-``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_name) + "."


ERROR_TEXT = {
    400: "Malformed JSON",
    401: "No valid API key (Authorization: Bearer <key> or X-API-Key)",
    403: "Not an admin key (ADMIN_API_KEYS): only admins change which model version serves",
    404: "Not found",
    409: "Not finished yet",
    413: "Body or row count over the limit",
    415: "Not a JSON Content-Type",
    422: "Invalid input (the message names the field), or non-finite numbers",
    429: "This API key is over its rate limit (Retry-After)",
    502: "Workers failed on every attempt",
    503: "No healthy worker, or overloaded (Retry-After)",
    504: "No answer within the request timeout",
}
_PROXY_ERRORS = (400, 413, 422, 502, 503, 504)


class AnyPrediction(BaseModel):
    """One prediction; the fields beside these depend on the served model."""

    model_config = ConfigDict(extra="allow")

    prediction: list[Any] = Field(description="The model's prediction for the row.")
    worker_id: str = Field(description="The worker that answered.")
    inference_time_ms: float = Field(description="Time in the worker from parsed request to result.")


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="Open Inference Protocol datatype, e.g. FP32.")
    shape: list[int] = Field(description="Shape with -1 for the batch axis.")
    description: str = ""


class ModelMetadata(BaseModel):
    """The served model's contract, as its workers publish it."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    labels: list[str] | None = None
    example: dict[str, Any] = Field(description="A /predict body that the model answers.")
    schemas: dict[str, Any] = Field(description="JSON schemas of the /predict request and response.")
    training: dict[str, Any] | None = Field(None, description="How a train job can fit the model; null: it cannot.")


class WorkerHealth(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(description="healthy once warm (200); loading, failed or draining (503).")
    worker_id: str
    gpu_id: str | None = Field(None, description="CUDA_VISIBLE_DEVICES of the worker, if any.")
    device: str | None = Field(None, description="The JAX device the model runs on.")
    model_loaded: bool
    model_name: str
    model_version: str
    input_shape: list[int] = Field(description="Shape of one input row, without the batch axis.")
    error: str | None = Field(None, description="Why the model failed to start, when it did.")


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


class PoolInfo(BaseModel):
    model: str = Field(description="The model name its workers report.")
    default: bool = Field(description="Whether /predict and /batch_predict answer with this model.")
    workers: int
    healthy: int = Field(description="Workers in rotation.")
    backends: list[str] = Field(description="The workers' URLs.")


class GatewayInfo(BaseModel):
    name: str
    version: str
    total_backends: int
    backends: list[BackendInfo]
    default_model: str | None = Field(description="DEFAULT_MODEL, else the first worker's model; null before any.")
    pools: list[PoolInfo] = Field(description="One per served model.")


def prediction_api(builder: OpenAPIBuilder, model: dict[str, Any] | None) -> None:
    """The prediction routes, for the served model's metadata, or generic when none is known."""
    if model is None:
        request, response, example = builder.schema(PredictRow), builder.schema(AnyPrediction), None
        about = "No worker has reported its model yet: the shapes below are generic."
    else:
        request = builder.json_schema("PredictRequest", model["schemas"]["request"])
        response = builder.json_schema("PredictResponse", model["schemas"]["response"])
        example = model["example"]
        shape = model["inputs"][0]["shape"][1:]
        about = f"Model {model['name']} version {model['version']}: input_data has shape {shape}."
    builder.add("/predict", "post", {
        "summary": "Predict one row",
        "description": about,
        "tags": ["prediction"],
        "requestBody": builder.json_body(request, example),
        "responses": builder.responses(response, *_PROXY_ERRORS),
    })
    builder.add("/batch_predict", "post", {
        "summary": "Predict many rows; answers are in request order",
        "description": about,
        "tags": ["prediction"],
        "requestBody": builder.json_body({"type": "array", "items": request},
                                         None if example is None else [example, example]),
        "responses": builder.responses({"type": "array", "items": response}, *_PROXY_ERRORS),
    })
    builder.add("/metadata", "get", {
        "summary": "The default model: name, version, inputs, outputs, labels, schemas, example",
        "tags": ["worker"],
        "responses": builder.responses(ModelMetadata, 503),
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
        "summary": "healthy (all workers up), degraded (some), unhealthy (none, 503) or draining (stopping, 503)",
        "tags": ["gateway"],
        "responses": {
            "200": {"description": "At least one worker is healthy",
                    "content": {"application/json": {"schema": builder.schema(GatewayHealth),
                                "example": {"status": "healthy", "alive_backends": 2, "total_backends": 2}}}},
            "503": {"description": "No worker is healthy, or the gateway is draining",
                    "content": {"application/json": {"schema": builder.schema(GatewayHealth)}}},
        },
    })
    builder.add("/gateway/info", "get", {
        "summary": "The gateway, its pools (one per model) and the state of each worker",
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


def model_prediction_api(builder: OpenAPIBuilder, models: dict[str, dict[str, Any]],
                         default: str | None = None) -> None:
    """``/models/{name}/predict`` and ``/batch_predict`` for each served model, with its own schemas and example."""
    for name, model in models.items():
        prefix = component_prefix(name)
        request = builder.json_schema("PredictRequest", model["schemas"]["request"], prefix)
        response = builder.json_schema("PredictResponse", model["schemas"]["response"], prefix)
        example = model["example"]
        shape = model["inputs"][0]["shape"][1:]
        about = (f"Model {name} version {model['version']} (its own pool of workers): input_data has shape {shape}."
                 + (" The default model: /predict answers the same." if name == default else ""))
        tags = [f"model {name}"]
        builder.add(f"/models/{name}/predict", "post", {
            "summary": f"Predict one row with model {name}", "description": about, "tags": tags,
            "requestBody": builder.json_body(request, example),
            "responses": builder.responses(response, *_PROXY_ERRORS, 404),
        })
        builder.add(f"/models/{name}/batch_predict", "post", {
            "summary": f"Predict many rows with model {name}; answers are in request order", "description": about,
            "tags": tags, "requestBody": builder.json_body({"type": "array", "items": request}, [example, example]),
            "responses": builder.responses({"type": "array", "items": response}, *_PROXY_ERRORS, 404),
        })


#: On the Open Inference Protocol's paths errors are its ``{"error": "..."}`` (gateway/protocol.py).
_PROTOCOL_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def document_access(builder: OpenAPIBuilder, api_keys: bool) -> None:
    """The answers every route can give besides its own: 415 on JSON bodies; with API keys, 401, 429 and security."""
    envelope = {"application/json": {"schema": builder.schema(ErrorResponse)}}
    if api_keys:
        builder.document["components"]["securitySchemes"] = _SECURITY_SCHEMES
    for path, operations in builder.document["paths"].items():
        error = {"application/json": {"schema": _PROTOCOL_ERROR}} if path.startswith("/v2") else envelope
        for operation in operations.values():
            answers = operation["responses"]
            if "requestBody" in operation:
                answers["415"] = {"description": ERROR_TEXT[415], "content": error}
            if not api_keys or path in OPEN_PATHS or path == "/metrics":
                continue
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            answers["401"] = {"description": ERROR_TEXT[401], "content": error}
            answers["429"] = {"description": ERROR_TEXT[429], "content": error, "headers": {
                "Retry-After": {"description": "Seconds until the key's bucket has a token",
                                "schema": {"type": "integer"}}}}


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


def model_identity(model: dict[str, Any] | None) -> Hashable:
    """What a document depends on of one model's metadata: its name and version."""
    return None if model is None else (model.get("name"), model.get("version"))


class LiveDocument:
    """The OpenAPI document of what is served now, rebuilt only when that changes (``identity`` of what
    ``served`` returns: by default one model's metadata, compared by name and version)."""

    def __init__(self, build: Callable[[Any], dict[str, Any]], served: Callable[[], Any],
                 identity: Callable[[Any], Hashable] = model_identity) -> None:
        self._build = build
        self._served = served
        self._identity = identity
        self._for: Hashable = identity(None)
        self._document = build(None)
        self.title: str = self._document["info"]["title"]

    def current(self) -> dict[str, Any]:
        served = self._served()
        key = self._identity(served)
        if key != self._for:
            self._document, self._for = self._build(served), key
        return self._document


def docs_routes(document: LiveDocument) -> list[BaseRoute]:
    title = document.title

    async def openapi(request: Any) -> Response:
        return JSONResponse(document.current())

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
