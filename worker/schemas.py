"""Request and response schemas of the prediction API.

They validate worker input and document the API in the gateway's OpenAPI
document, so this module stays free of JAX (the gateway imports it).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, create_model

#: A finite JSON number; booleans and numeric strings are refused.
Number = Annotated[float, Strict(), AllowInfNan(False)]

IRIS_EXAMPLE = {"input_data": [5.1, 3.5, 1.4, 0.2], "return_probabilities": True}


class PredictRequest(BaseModel):
    """One row to predict; ``input_data`` has the model's per-row shape."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [IRIS_EXAMPLE]})

    input_data: list[Number] = Field(description="One input row: the model's features, as numbers.")
    return_probabilities: Annotated[bool, Strict()] = Field(
        False, description="Include the class probabilities in the response."
    )


def request_model_for_rank(rank: int) -> type[PredictRequest]:
    """A PredictRequest whose ``input_data`` is nested ``rank`` levels deep."""
    if rank == 1:
        return PredictRequest
    field_type: Any = Number
    for _ in range(rank):
        field_type = list[field_type]
    return create_model(
        f"PredictRequestRank{rank}",
        __base__=PredictRequest,
        input_data=(field_type, Field(description="One input row, nested to the model's shape.")),
    )


class PredictResponse(BaseModel):
    """One prediction. Models add their own fields (the default adds uncertainty)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "prediction": [0],
                    "class_name": "setosa",
                    "probabilities": [0.97, 0.03, 0.0],
                    "probabilities_std": [0.02, 0.02, 0.0],
                    "worker_id": "0",
                    "inference_time_ms": 0.84,
                }
            ]
        },
    )

    prediction: list[Any] = Field(description="The model's prediction for the row (a class index here).")
    probabilities: list[float] | None = Field(
        None, description="Posterior mean class probabilities, when asked for."
    )
    probabilities_std: list[float] | None = Field(
        None, description="Posterior standard deviation of each class probability."
    )
    worker_id: str = Field(description="The worker that answered.")
    inference_time_ms: float = Field(description="Time in the worker from parsed request to result.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_input.")
    message: str = Field(description="What went wrong, naming the field.")


class ErrorResponse(BaseModel):
    """The one error envelope of the project, from gateway and workers alike."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {"code": "invalid_input", "message": "input_data: expected 4 values, got 3"},
                    "request_id": "5f0c6a4e9d7b4d8e",
                }
            ]
        }
    )

    error: ErrorDetail
    request_id: str | None = None


class WorkerHealth(BaseModel):
    status: str = Field(description="healthy once warm, else unhealthy (503).")
    worker_id: str
    gpu_id: str | None = Field(None, description="CUDA_VISIBLE_DEVICES of the worker, if any.")
    device: str | None = Field(None, description="The JAX device the model runs on.")
    model_loaded: bool
    model_name: str
    model_version: str
    input_shape: list[int] = Field(description="Shape of one input row, without the batch axis.")
