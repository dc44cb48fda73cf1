"""The Open Inference Protocol (KServe V2) infer request and response, for one model.

Decoding turns a request (JSON ``data``, flat or nested, or the binary tensor
data extension: a JSON header of ``Inference-Header-Content-Length`` bytes
followed by each binary input's raw little-endian bytes, in input order) into
an ``(n, *input_shape)`` array of the model's input dtype; the first axis of a
tensor's ``shape`` is the batch. Encoding turns the model's output tensors
(what ``predict_batch`` returns, not ``postprocess``) into OIP outputs, as JSON
``data`` or, when asked (``parameters.binary_data`` per output, or
``binary_data_output`` for the request), as raw bytes after the JSON header.

Non-finite values follow the JSON routes' one rule in both encodings: a float
input or output that is NaN or infinite is refused with a clear error, never
answered as null (JSON) nor as a NaN that binary could carry.

Every problem is a :class:`ProtocolError`, answered as the protocol's
``{"error": "..."}`` body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from worker.contract import Model, TensorSpec
from worker.metadata import datatype
from worker.predictor import first_non_finite_row, non_finite_output_message

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"
#: What JSON ``data`` may hold for each kind of numpy dtype (bool, signed, unsigned, float).
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


class ProtocolError(Exception):
    """A request the protocol refuses; ``status_code`` is 400 unless said otherwise."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


@dataclass
class InferRequest:
    """A decoded infer request: the rows and which outputs to answer, each as binary or JSON."""

    rows: np.ndarray
    #: Output name -> answer it as binary; in the order to answer them.
    outputs: dict[str, bool]
    id: str | None = None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _parameters(tensor: Mapping[str, Any], what: str) -> dict[str, Any]:
    return _object(tensor.get("parameters", {}), f"{what}: parameters")


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail of a body (the tail is empty without the extension)."""
    if header_length is None:
        header, tail = body, b""
    else:
        if not header_length.isdigit():
            raise ProtocolError(f"Inference-Header-Content-Length must be a number of bytes, not {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length is {length}, but the body has {len(body)} bytes")
        header, tail = body[:length], body[length:]
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the request header is not valid JSON: {exc}") from None
    return _object(request, "the request"), tail


class ProtocolCodec:
    """Decodes infer requests for a model and encodes its outputs."""

    def __init__(self, model: Model, outputs: tuple[TensorSpec, ...], max_rows: int) -> None:
        self.model = model
        self.max_rows = max_rows
        self.input_shape = tuple(model.input_shape or ())
        self.input_dtype = np.dtype(model.input_dtype)
        self.input_datatype = datatype(model.input_dtype)
        self.output_specs = {spec.name: spec for spec in outputs}

    def decode(self, body: bytes, header_length: str | None) -> InferRequest:
        request, tail = split_body(body, header_length)
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise ProtocolError("inputs must be a non-empty list")
        tensors = [_object(tensor, f"inputs[{i}]") for i, tensor in enumerate(inputs)]
        names = [tensor.get("name") for tensor in tensors]
        name = self.model.input_name
        if names != [name]:
            raise ProtocolError(f"the model takes one input, {name!r}; the request has {names}")
        [tensor] = tensors
        size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ProtocolError(f"input {name!r}: binary_data_size must be a number of bytes")
        if (size or 0) != len(tail):
            raise ProtocolError(
                f"input {name!r}: binary_data_size is {size or 0} bytes but {len(tail)} bytes follow the JSON "
                "header (Inference-Header-Content-Length)"
            )
        rows = self._rows(tensor, tail if size is not None else None)
        parameters = _object(request.get("parameters", {}), "parameters")
        request_id = request.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise ProtocolError("id must be a string")
        return InferRequest(rows, self._requested(request, parameters), request_id)

    def _rows(self, tensor: dict[str, Any], raw: bytes | None) -> np.ndarray:
        what = f"input {self.model.input_name!r}"
        if tensor.get("datatype") != self.input_datatype:
            raise ProtocolError(f"{what}: datatype {tensor.get('datatype')!r}, the model takes {self.input_datatype}")
        shape = tensor.get("shape")
        expected = [-1, *self.input_shape]
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise ProtocolError(f"{what}: shape must be a list of integers, e.g. {[1, *self.input_shape]}")
        if len(shape) != len(expected) or tuple(shape[1:]) != self.input_shape or shape[0] < 1:
            raise ProtocolError(f"{what}: shape {shape}, the model takes {expected} (-1: any number of rows)")
        if shape[0] > self.max_rows:
            raise ProtocolError(f"{what}: {shape[0]} rows in one request; the limit is {self.max_rows}", 413)
        count = math.prod(shape)
        if raw is not None:
            if "data" in tensor:
                raise ProtocolError(f"{what}: both data and binary_data_size given; send one")
            size = count * self.input_dtype.itemsize
            if len(raw) != size:
                raise ProtocolError(f"{what}: binary_data_size is {len(raw)} bytes; shape {shape} of "
                                    f"{self.input_datatype} takes {size}")
            rows = np.frombuffer(raw, self.input_dtype.newbyteorder("<")).astype(self.input_dtype)
        else:
            rows = self._json_data(tensor.get("data"), count, shape, what)
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            raise ProtocolError(f"{what}: values are not finite or overflow {self.input_datatype}")
        return rows.reshape(shape)

    def _json_data(self, data: Any, count: int, shape: list[int], what: str) -> np.ndarray:
        if not isinstance(data, list):
            raise ProtocolError(f"{what}: data must be a list (flat or nested), or send the tensor as binary")
        try:
            values = np.asarray(data)
        except ValueError:
            raise ProtocolError(f"{what}: data is ragged; nested lists must match shape {shape}") from None
        if values.size != count or (values.ndim > 1 and list(values.shape) != shape):
            raise ProtocolError(f"{what}: data has shape {list(values.shape)}, shape says {shape}")
        if values.size and values.dtype.kind not in _JSON_KINDS.get(self.input_dtype.kind, ""):
            raise ProtocolError(f"{what}: data holds {values.dtype.kind!r}-kind values, not {self.input_datatype}")
        if self.input_dtype.kind in "iu" and values.size:
            limits = np.iinfo(self.input_dtype)
            if values.min() < limits.min or values.max() > limits.max:
                raise ProtocolError(f"{what}: values out of range for {self.input_datatype}")
        with np.errstate(over="ignore"):
            return values.astype(self.input_dtype).reshape(-1)

    def _requested(self, request: dict[str, Any], parameters: dict[str, Any]) -> dict[str, bool]:
        default = parameters.get("binary_data_output", False)
        if not isinstance(default, bool):
            raise ProtocolError("parameters.binary_data_output must be true or false")
        asked = request.get("outputs")
        if asked is None:
            return {name: default for name in self.output_specs}
        if not isinstance(asked, list):
            raise ProtocolError("outputs must be a list")
        requested: dict[str, bool] = {}
        for i, output in enumerate(asked):
            name = _object(output, f"outputs[{i}]").get("name")
            if not isinstance(name, str) or name not in self.output_specs:
                raise ProtocolError(f"outputs[{i}]: unknown output {name!r}; the model has {list(self.output_specs)}")
            options = _parameters(output, f"output {name!r}")
            if options.get("classification"):
                raise ProtocolError(f"output {name!r}: the classification extension is not supported")
            binary = options.get("binary_data", default)
            if not isinstance(binary, bool):
                raise ProtocolError(f"output {name!r}: parameters.binary_data must be true or false")
            requested[name] = binary
        return requested

    def encode(self, request: InferRequest, outputs: Mapping[str, np.ndarray],
               version: str | None = None) -> tuple[bytes, dict[str, str]]:
        """The response body and its headers (with the header length when any output is binary).

        ``version``: the model version that computed ``outputs`` (default: the contract's).
        """
        tensors, tail = [], []
        for name, binary in request.outputs.items():
            value = np.asarray(outputs[name])
            if (row := first_non_finite_row(value)) is not None:
                raise ProtocolError(f"row {row}: {non_finite_output_message(name)}")
            tensor: dict[str, Any] = {"name": name, "datatype": datatype(str(value.dtype)), "shape": list(value.shape)}
            if binary:
                raw = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()
                tensor["parameters"] = {"binary_data_size": len(raw)}
                tail.append(raw)
            else:
                tensor["data"] = value.reshape(-1).tolist()
            tensors.append(tensor)
        answer: dict[str, Any] = {"model_name": self.model.name, "model_version": version or self.model.version}
        if request.id is not None:
            answer["id"] = request.id
        answer["outputs"] = tensors
        header = orjson.dumps(answer)
        if not tail:
            return header, {"content-type": "application/json"}
        return b"".join([header, *tail]), {"content-type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
