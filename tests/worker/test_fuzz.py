"""Any JSON body gets an answer below 500 from the worker: never a crash for bad input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.worker.test_app import FakeRuntime, make_client, wait_ready

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
    runtime = FakeRuntime()
    runtime.warm.set()
    with make_client(runtime) as client:
        wait_ready(client)
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
