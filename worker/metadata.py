"""What a worker publishes about its model (``GET /metadata``), and the schemas behind it.

The field names follow the Open Inference Protocol's model metadata (``name``,
``versions``, ``platform``, ``inputs`` / ``outputs`` with ``datatype`` and a
``shape`` whose ``-1`` is the batch axis); the rest is this project's: the
example request, the labels, the JSON schemas of the JSON routes, and whether
(and how) the model can be trained by a job. The gateway builds its OpenAPI
document from it without importing anything of the worker.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, create_model

from common.rows import Number, PredictRow
from worker.contract import Model, TensorSpec, example_row, implements

#: numpy dtype name -> the Open Inference Protocol's datatype.
_DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
}


def datatype(dtype: str) -> str:
    return _DATATYPES.get(str(np.dtype(dtype)) if dtype != "bfloat16" else dtype, "BYTES")


def nested_list(shape: tuple[int, ...], item: Any = Number, exact: bool = True) -> Any:
    """The type of a value of ``shape`` as nested lists; with ``exact``, each level's length is fixed."""
    annotation = item
    for size in reversed(shape):
        annotation = (
            Annotated[list[annotation], Field(min_length=size, max_length=size)] if exact else list[annotation]
        )
    return annotation


def request_model(model: Model, exact: bool = True) -> type[PredictRow]:
    """The body of ``/predict`` for this model; with ``exact``, the documented one.

    The worker validates with ``exact=False`` (the nesting depth only) and
    checks the shape itself, to answer "expected shape (4,), got (3,)" rather
    than pydantic's per-level length messages.
    """
    shape = model.input_shape or ()
    return create_model(
        "PredictRequest",
        __base__=PredictRow,
        __doc__=f"One row for {model.name}: input_data of shape {list(shape)} ({model.input_dtype}).",
        input_data=(nested_list(shape, exact=exact), Field(description=model.input_description)),
    )


def _default_response(model: Model, outputs: tuple[TensorSpec, ...]) -> type[BaseModel]:
    """What the default ``postprocess`` returns, as a pydantic model."""
    first, rest = outputs[0], outputs[1:]
    fields: dict[str, Any] = {}
    if model.labels is not None:
        fields["prediction"] = (nested_list((1,), int), Field(description="Index of the best class."))
        fields["label"] = (str, Field(description=f"Its label: one of {', '.join(model.labels)}."))
        fields[first.name] = (
            nested_list(first.shape) | None,
            Field(None, description=f"{first.description or first.name} (when return_probabilities is true)."),
        )
    else:
        fields["prediction"] = (nested_list(first.shape or (1,)), Field(description=first.description or first.name))
        for spec in rest:
            fields[spec.name] = (nested_list(spec.shape), Field(description=spec.description or spec.name))
    return create_model("Prediction", **fields)


def response_model(model: Model, outputs: tuple[TensorSpec, ...]) -> type[BaseModel]:
    """The answer of ``/predict``: what ``postprocess`` returns plus the worker's own fields."""
    base = model.response_model or _default_response(model, outputs)
    return create_model(
        "PredictResponse",
        __base__=base,
        worker_id=(str, Field(description="The worker that answered.")),
        inference_time_ms=(float, Field(description="Time in the worker from parsed request to result.")),
    )


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": datatype(spec.dtype), "shape": [-1, *spec.shape],
            "description": spec.description}


def build_metadata(model: Model, outputs: tuple[TensorSpec, ...], import_path: str) -> dict[str, Any]:
    """The document ``GET /metadata`` answers; ``outputs`` are the traced output specs."""
    row = example_row(type(model))
    input_spec = TensorSpec(model.input_name, model.input_shape or (), model.input_dtype, model.input_description)
    trainable = implements(model, "fit")
    training = None
    if trainable:
        training = {
            "target": {"shape": list(model.target_shape), "datatype": datatype(model.target_dtype)},
            "default_data": implements(model, "training_data"),
            "options_schema": model.fit_options.model_json_schema() if model.fit_options else {"type": "object"},
        }
    return {
        "name": model.name,
        "versions": [model.version],
        "version": model.version,
        "platform": "jax",
        "inputs": [_tensor(input_spec)],
        "outputs": [_tensor(spec) for spec in outputs],
        "labels": list(model.labels) if model.labels is not None else None,
        "example": {"input_data": row, "return_probabilities": True},
        "schemas": {
            "request": request_model(model).model_json_schema(),
            "response": response_model(model, outputs).model_json_schema(),
        },
        "training": training,
        "model_class": import_path,
    }
