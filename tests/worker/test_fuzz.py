"""Any JSON body gets an answer below 500 from the worker: never a crash for bad input (JSON routes and /v2)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.fakes import SumModel, traced_outputs
from tests.worker.test_app import ready_client
from worker.protocol import ProtocolCodec, ProtocolError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=15), children, max_size=4),
    max_leaves=20,
)
predict_like = st.fixed_dictionaries(
    {"input_data": json_values}, optional={"return_probabilities": json_values, "other": json_values}
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with ready_client() as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | predict_like)
def test_predict_never_answers_500(client: TestClient, body: object) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code in (200, 400, 413, 422), response.text
    assert "error" in response.json() or response.status_code == 200


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.lists(predict_like, max_size=4) | json_values)
def test_batch_predict_never_answers_500(client: TestClient, body: object) -> None:
    response = client.post("/batch_predict", json=body)
    assert response.status_code in (200, 400, 413, 422), response.text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=64))
def test_arbitrary_bytes_are_400_or_422(client: TestClient, body: bytes) -> None:
    response = client.post("/predict", content=body)
    assert response.status_code in (200, 400, 422), response.text


def _tensor_like() -> st.SearchStrategy:
    shapes = st.lists(st.integers(-2, 4), max_size=4) | json_values
    return st.fixed_dictionaries(
        {"name": st.sampled_from(["input_data", "x"]) | json_values, "shape": shapes,
         "datatype": st.sampled_from(["FP32", "INT64", "BOOL", "BYTES"]) | json_values},
        optional={"data": json_values, "parameters": st.fixed_dictionaries({}, optional={
            "binary_data_size": st.integers(-1, 40) | json_values})},
    )


infer_like = st.fixed_dictionaries(
    {"inputs": st.lists(_tensor_like(), max_size=2) | json_values},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["total", "y"]) | json_values},
                                                        optional={"parameters": json_values}), max_size=2),
              "parameters": json_values, "id": json_values},
)


@settings(max_examples=200, deadline=None)
@given(body=json_values | infer_like, tail=st.binary(max_size=40), header=st.booleans())
def test_infer_decoding_refuses_any_bad_body_with_a_protocol_error(body: object, tail: bytes, header: bool) -> None:
    """Only ever rows or a ProtocolError (a 4xx): no other exception escapes to become a 500."""
    head = json.dumps(body).encode()
    codec = ProtocolCodec(SumModel(), traced_outputs(SumModel), max_rows=8)
    try:
        request = codec.decode(head + tail if header else head, str(len(head)) if header else None)
    except ProtocolError as exc:
        assert 400 <= exc.status_code < 500
    else:
        assert request.rows.shape[1:] == (4,) and request.rows.dtype == np.float32
