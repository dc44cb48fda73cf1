"""The Open Inference Protocol routes in the OpenAPI document.

Built from the served model's metadata when a worker has reported it (its
name, input and outputs, an example infer body), generically before.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.docs import OpenAPIBuilder
from gateway.protocol import PREFIX

_TAGS = ["open inference protocol"]
_BINARY = ("With the binary tensor data extension, the body is this JSON followed by the raw little-endian bytes of "
           "each tensor whose parameters.binary_data_size is set, and the Inference-Header-Content-Length header "
           "gives the JSON's length in bytes.")


class ProtocolError(BaseModel):
    error: str = Field(description="What went wrong.")


class Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int] = Field(description="The first axis is the batch: the number of rows.")
    datatype: str = Field(description="FP32, INT64, BOOL...: the model's datatype, exactly.")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: bytes of this tensor after the "
                                              "JSON header (binary tensor data extension).")
    data: list[Any] | None = Field(None, description="Row-major values, flat or nested; absent when binary.")


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true answers this output as binary.")


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: the default of every output.")
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = Field(None, description="Which outputs to answer; default: all.")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[Tensor]


class ProtocolTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 is the batch axis.")


class ProtocolModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[ProtocolTensorMetadata]
    outputs: list[ProtocolTensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


def _flat(value: Any) -> list[Any]:
    return [item for part in value for item in _flat(part)] if isinstance(value, list) else [value]


def _example(model: dict[str, Any]) -> dict[str, Any]:
    [tensor] = model["inputs"]
    row = model["example"]["input_data"]
    return {"inputs": [{"name": tensor["name"], "shape": [1, *tensor["shape"][1:]], "datatype": tensor["datatype"],
                        "data": _flat(row)}]}


def protocol_api(builder: OpenAPIBuilder, model: dict[str, Any] | None, names: list[str] | None = None) -> None:
    """``/v2``: server metadata and health, model metadata and readiness, infer; ``model`` the default model's
    metadata (the example), ``names`` every served model's name (each goes to its own pool)."""
    name_schema: dict[str, Any] = {"type": "string"}
    if model is not None:
        name_schema["example"] = model["name"]
    if names:
        name_schema["enum"] = names
    params = [{"name": "model_name", "in": "path", "required": True, "schema": name_schema,
               "description": "A served model's name: that model's workers answer; another is 404."}]
    versioned = [*params, {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}]
    errors = {"application/json": {"schema": builder.schema(ProtocolError)}}

    def answers(schema: Any, *statuses: int) -> dict[str, Any]:
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": builder.schema(schema)}}}}
        return ok | {str(status): {"description": _ERRORS[status], "content": errors} for status in statuses}

    builder.add(PREFIX, "get", {"summary": "Server metadata: name, version, extensions (model_repository among "
                                           "them: the gateway's /v2/repository routes)", "tags": _TAGS,
                                "responses": answers(ServerMetadata, 503)})
    builder.add(f"{PREFIX}/health/live", "get", {"summary": "200 while the gateway runs", "tags": _TAGS,
                                                 "responses": {"200": {"description": "Live"}}})
    builder.add(f"{PREFIX}/health/ready", "get", {
        "summary": "200 when at least one worker is ready, else 503", "tags": _TAGS,
        "responses": {"200": {"description": "Ready"}, "503": {"description": "No worker is ready"}},
    })
    example = None if model is None else _example(model)
    about = "Runs through the same batcher as /predict and answers the model's output tensors. " + _BINARY
    for path, parameters in ((f"{PREFIX}/models/{{model_name}}", params),
                             (f"{PREFIX}/models/{{model_name}}/versions/{{version}}", versioned)):
        builder.add(path, "get", {"summary": "Model metadata: inputs and outputs with datatypes and shapes",
                                  "tags": _TAGS, "parameters": parameters,
                                  "responses": answers(ProtocolModelMetadata, 404, 503)})
        builder.add(f"{path}/ready", "get", {"summary": "200 when the model is ready", "tags": _TAGS,
                                             "parameters": parameters, "responses": answers(dict, 404, 503)})
        builder.add(f"{path}/infer", "post", {
            "summary": "Infer a batch of rows (Open Inference Protocol)", "description": about, "tags": _TAGS,
            "parameters": parameters,
            "requestBody": builder.json_body(builder.schema(InferRequest), example),
            "responses": answers(InferResponse, 400, 404, 413, 502, 503, 504),
        })


_ERRORS = {
    400: "Bad request: shape, datatype, binary sizes (the message says which)",
    404: "A model no worker serves (the message names the served ones)",
    413: "Body or rows over the limit",
    502: "Workers failed on every attempt",
    503: "No ready worker, or overloaded (Retry-After)",
    504: "No answer within the request timeout",
}
