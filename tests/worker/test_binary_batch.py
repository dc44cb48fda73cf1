"""/batch_predict with a binary rows body (common/binary_rows.py): the JSON batch's answers and errors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from common import binary_rows
from common.json_errors import NON_FINITE_MESSAGE
from tests.worker.test_app import ready_client

HEADERS = {"Content-Type": binary_rows.CONTENT_TYPE}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with ready_client() as client:
        yield client


def rows_body(rows: list, flags: list[bool] | None = None, datatype: str = "FP32", shape: tuple = (4,)) -> bytes:
    packed = [pack(row, datatype, len(shape)) for row in rows]
    return binary_rows.encode(packed, shape, datatype, flags if flags is not None else [False] * len(rows))


def pack(row: list, datatype: str, rank: int) -> bytes:
    """Rows as bytes, NaN included (which ``pack_row`` refuses: the worker must refuse it too)."""
    if any(isinstance(v, float) and not math.isfinite(v) for v in row):
        return np.asarray(row, "<f4").tobytes()
    return binary_rows.pack_row(row, datatype, rank)


def test_the_answers_are_those_of_the_json_batch(client: TestClient) -> None:
    rows, flags = [[1, 2, 3, 4], [0.5, 0, 0, -1], [2.0**60, 0, 0, 0]], [False, True, False]
    binary = client.post("/batch_predict", content=rows_body(rows, flags), headers={**HEADERS, "X-Request-ID": "b1"})
    items = [{"input_data": row, "return_probabilities": flag} for row, flag in zip(rows, flags, strict=True)]
    json = client.post("/batch_predict", json=items)
    assert binary.status_code == json.status_code == 200
    assert binary.headers["x-request-id"] == "b1" and binary.headers["content-type"] == "application/json"

    def without_times(answers: list[dict]) -> list[dict]:
        return [{k: v for k, v in answer.items() if k != "inference_time_ms"} for answer in answers]

    assert without_times(binary.json()) == without_times(json.json())
    assert [answer["prediction"] for answer in binary.json()] == [[10.0], [-0.5], [2.0**60]]
    any_case = {"Content-Type": "Application/X-JAX-Rows; v=1"}
    no_rows = client.post("/batch_predict", content=rows_body([]), headers=any_case)
    assert no_rows.status_code == 200 and no_rows.json() == []


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    (b"JXR1", 400, "malformed_body", "a rows body starts with a 20-byte header"),
    (rows_body([[1, 2, 3, 4]])[:-1], 400, "malformed_body",
     "the body has 40 bytes; 1 rows of shape (4,) of FP32 take 41"),
    (b'[{"input_data": [1, 2, 3, 4]}]', 400, "malformed_body", "does not start with b'JXR1'"),
    (rows_body([[1, 2, 3, 4]], datatype="FP64"), 422, "invalid_input",
     "input_data: datatype FP64, the model takes FP32"),
    (rows_body([[1, 2, 3]], shape=(3,)), 422, "invalid_input", "input_data: expected shape (4,), got (3,)"),
    (rows_body([[1, 2, 3, 4]] * 6), 413, "payload_too_large", "6 rows in one request; the limit is 5"),
    (rows_body([[1, 2, 3, 4], [1, 2, float("nan"), 4]]), 422, "invalid_input",
     f"[1].input_data: {NON_FINITE_MESSAGE}"),
    (rows_body([[float("-inf"), 2, 3, 4]]), 422, "invalid_input", f"[0].input_data: {NON_FINITE_MESSAGE}"),
    (rows_body([[3e38, 3e38, 0, 0], [1, 2, 3, 4]]), 422, "invalid_input",
     "row 0: the model's output 'total' is not finite"),
    (b"JXR1" + b"\0" * 2000, 413, "payload_too_large", "the limit is 2000"),
])
def test_bad_bodies_get_the_json_batch_statuses(client: TestClient, body: bytes, status: int, code: str,
                                                message: str) -> None:
    response = client.post("/batch_predict", content=body, headers=HEADERS)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert message in response.json()["error"]["message"]
