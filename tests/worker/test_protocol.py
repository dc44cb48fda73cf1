"""The Open Inference Protocol codec and the worker's /v2 routes, with fake models (no JAX)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from tests.fakes import GridModel, traced_outputs
from tests.worker.test_app import FakeRuntime, make_client, ready_client
from worker.protocol import HEADER_LENGTH, InferRequest, ProtocolCodec, ProtocolError


def grid_codec(max_rows: int = 8) -> ProtocolCodec:
    return ProtocolCodec(GridModel(), traced_outputs(GridModel), max_rows)


def infer_body(data: Any = None, shape: Any = (1, 2, 3), datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input_data", "shape": list(shape), "datatype": datatype}
    if data is not None:
        tensor["data"] = data
    return {"inputs": [tensor], **extra}


def binary_body(rows: np.ndarray, header: dict[str, Any] | None = None) -> tuple[bytes, str]:
    header = header or infer_body(shape=rows.shape)
    header["inputs"][0]["parameters"] = {"binary_data_size": rows.nbytes}
    head = orjson.dumps(header)
    return head + rows.tobytes(), str(len(head))


def decode_error(body: Any, header_length: str | None = None, codec: ProtocolCodec | None = None) -> ProtocolError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(ProtocolError) as caught:
        (codec or grid_codec()).decode(raw, header_length)
    return caught.value


def test_json_data_flat_and_nested_decode_to_the_same_rows() -> None:
    codec = grid_codec()
    flat = codec.decode(orjson.dumps(infer_body([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], (2, 2, 3))), None)
    nested = codec.decode(orjson.dumps(infer_body([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], (2, 2, 3))),
                          None)
    assert flat.rows.dtype == np.float32 and flat.rows.shape == (2, 2, 3)
    np.testing.assert_array_equal(flat.rows, nested.rows)
    assert flat.outputs == {"mean": False, "spread": False}


def test_binary_input_decodes_the_bytes_after_the_header() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    body, length = binary_body(rows)
    decoded = grid_codec().decode(body, length)
    np.testing.assert_array_equal(decoded.rows, rows)


@pytest.mark.parametrize(("body", "says"), [
    (infer_body([1, 2, 3], (1, 3)), "shape [1, 3], the model takes [-1, 2, 3]"),
    (infer_body([1, 2, 3, 4, 5, 6], (1, 3, 2)), "shape [1, 3, 2]"),
    (infer_body([1, 2, 3], (1, 2, 3)), "data has shape [3], shape says [1, 2, 3]"),
    (infer_body([[1, 2], [3, 4, 5]], (1, 2, 3)), "ragged"),
    (infer_body([1, 2, 3, 4, 5, 6], (0, 2, 3)), "the model takes [-1, 2, 3]"),
    (infer_body([1, 2, 3, 4, 5, 6], (1, 2, 3), "FP64"), "datatype 'FP64', the model takes FP32"),
    (infer_body(["a", "b", "c", "d", "e", "f"]), "not FP32"),
    (infer_body([True] * 6), "not FP32"),
    (infer_body([1e39] * 6), "not finite or overflow FP32"),
    (infer_body([1] * 6, (1, 2, "3")), "shape must be a list of integers"),
    (infer_body(), "data must be a list"),
    ({"inputs": []}, "inputs must be a non-empty list"),
    ({"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [0] * 6}]}, "one input, 'input_data'"),
    (infer_body([0] * 6, outputs=[{"name": "nope"}]), "unknown output 'nope'"),
    (infer_body([0] * 6, outputs=[{"name": ["mean"]}]), "unknown output ['mean']"),
    (infer_body([0] * 6, outputs={"name": "mean"}), "outputs must be a list"),
    (infer_body([0] * 6, parameters={"binary_data_output": 1}), "binary_data_output must be true or false"),
    (infer_body([0] * 6, id=7), "id must be a string"),
    (infer_body([0] * 6, outputs=[{"name": "mean", "parameters": {"classification": 2}}]), "classification"),
])
def test_bad_requests_are_400_with_a_message_that_says_why(body: dict[str, Any], says: str) -> None:
    error = decode_error(body)
    assert error.status_code == 400 and says in error.message


def test_too_many_rows_is_413() -> None:
    error = decode_error(infer_body([0] * 18, (3, 2, 3)), codec=grid_codec(max_rows=2))
    assert error.status_code == 413 and "limit is 2" in error.message


def test_not_json_is_400() -> None:
    assert "not valid JSON" in decode_error(b"{nope").message


def test_binary_sizes_must_match_the_shape_and_the_body() -> None:
    rows = np.zeros((1, 2, 3), np.float32)
    body, length = binary_body(rows)
    assert "follow the JSON header" in decode_error(body + b"xx", length).message
    assert "follow the JSON header" in decode_error(body[:-4], length).message
    short, short_length = binary_body(np.zeros((1, 2, 2), np.float32), infer_body(shape=(1, 2, 3)))
    assert "shape [1, 2, 3] of FP32 takes 24" in decode_error(short, short_length).message


def test_a_wrong_header_length_is_400() -> None:
    body, length = binary_body(np.zeros((1, 2, 3), np.float32))
    assert "body has" in decode_error(body, str(len(body) + 1)).message
    assert "a number of bytes" in decode_error(body, "twelve").message
    assert "not valid JSON" in decode_error(body, str(int(length) - 1)).message
    # Binary bytes with no header length: the whole body is read as JSON.
    assert "not valid JSON" in decode_error(body).message


def test_non_finite_binary_inputs_are_refused_like_json_ones() -> None:
    body, length = binary_body(np.array([[[np.nan, 0, 0], [0, 0, 0]]], np.float32))
    assert "not finite" in decode_error(body, length).message


def test_encode_answers_json_or_binary_per_output() -> None:
    codec = grid_codec()
    outputs = {"mean": np.array([1.5, 2.5], np.float32), "spread": np.array([3.0, 4.0], np.float32)}
    body, headers = codec.encode(InferRequest(np.zeros((2, 2, 3)), {"spread": False}, "r1"), outputs)
    assert headers == {"content-type": "application/json"}
    assert orjson.loads(body) == {"model_name": "grid", "model_version": "1", "id": "r1", "outputs": [
        {"name": "spread", "datatype": "FP32", "shape": [2], "data": [3.0, 4.0]}]}
    body, headers = codec.encode(InferRequest(np.zeros((2, 2, 3)), {"mean": True, "spread": False}), outputs)
    length = int(headers[HEADER_LENGTH])
    header = orjson.loads(body[:length])
    assert header["outputs"][0] == {"name": "mean", "datatype": "FP32", "shape": [2],
                                    "parameters": {"binary_data_size": 8}}
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4"), outputs["mean"])


def test_binary_data_output_is_the_default_of_each_requested_output() -> None:
    request = grid_codec().decode(orjson.dumps(infer_body(
        [0] * 6, parameters={"binary_data_output": True},
        outputs=[{"name": "mean"}, {"name": "spread", "parameters": {"binary_data": False}}])), None)
    assert request.outputs == {"mean": True, "spread": False}


@pytest.mark.parametrize("binary", [False, True])
def test_non_finite_outputs_are_an_error_in_both_encodings(binary: bool) -> None:
    outputs = {"mean": np.array([1.0, np.inf], np.float32), "spread": np.zeros(2, np.float32)}
    with pytest.raises(ProtocolError, match="row 1: the model's output 'mean' is not finite"):
        grid_codec().encode(InferRequest(np.zeros((2, 2, 3)), {"mean": binary}), outputs)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with ready_client() as client:
        yield client


def sum_infer(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input_data", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}], **extra}


def test_server_and_model_metadata(client: TestClient) -> None:
    server = client.get("/v2").json()
    assert server["name"] == "jax-inference-worker" and "binary_tensor_data" in server["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    metadata = client.get("/v2/models/sum").json()
    assert metadata == {
        "name": "sum", "versions": ["3"], "platform": "jax",
        "inputs": [{"name": "input_data", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "total", "datatype": "FP32", "shape": [-1, 1]}],
    }
    assert client.get("/v2/models/sum/versions/3").json() == metadata
    assert client.get("/v2/models/sum/ready").json() == {"name": "sum", "ready": True}


def test_infer_runs_through_the_batcher(client: TestClient) -> None:
    answer = client.post("/v2/models/sum/infer", json=sum_infer([[1, 2, 3, 4], [5, 6, 7, 8]], id="a"))
    assert answer.status_code == 200
    assert answer.json() == {"model_name": "sum", "model_version": "3", "id": "a", "outputs": [
        {"name": "total", "datatype": "FP32", "shape": [2, 1], "data": [10.0, 26.0]}]}
    versioned = client.post("/v2/models/sum/versions/3/infer", json=sum_infer([[1, 1, 1, 1]]))
    assert versioned.json()["outputs"][0]["data"] == [4.0]
    predict = client.post("/predict", json={"input_data": [1, 2, 3, 4]}).json()
    assert predict["prediction"] == [10.0]


def test_binary_infer_over_http(client: TestClient) -> None:
    rows = np.array([[1, 2, 3, 4]], np.float32)
    header = sum_infer([[0] * 4], parameters={"binary_data_output": True})
    del header["inputs"][0]["data"]
    body, length = binary_body(rows, header)
    headers = {"Inference-Header-Content-Length": length, "content-type": "application/octet-stream"}
    answer = client.post("/v2/models/sum/infer", content=body, headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    size = int(answer.headers[HEADER_LENGTH])
    assert np.frombuffer(answer.content[size:], "<f4").tolist() == [10.0]


@pytest.mark.parametrize("path", ["/v2/models/other", "/v2/models/sum/versions/9", "/v2/models/other/ready"])
def test_another_model_is_404(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404 and "unknown model" in answer.json()["error"]


def test_errors_are_the_protocol_body(client: TestClient) -> None:
    unknown = client.post("/v2/models/other/infer", json=sum_infer([[1, 2, 3, 4]]))
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    bad = client.post("/v2/models/sum/infer", json=sum_infer([[1, 2, 3]]))
    assert bad.status_code == 400 and "data has shape [1, 3], shape says [1, 4]" in bad.json()["error"]
    too_big = client.post("/v2/models/sum/infer", content=b"x" * 3000)
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]


def test_not_ready_is_503_with_retry_after() -> None:
    runtime = FakeRuntime()
    with make_client(runtime) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        refused = client.post("/v2/models/sum/infer", json=sum_infer([[1, 2, 3, 4]]))
        assert refused.status_code == 503 and refused.headers["retry-after"] and "loading" in refused.json()["error"]
        runtime.warm.set()
