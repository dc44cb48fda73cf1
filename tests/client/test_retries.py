"""Retries of both clients: 429 and 503 honour Retry-After, capped; the backoff is capped; 4xx are not retried."""

from __future__ import annotations

import httpx
import pytest

from inference_client import (
    AuthenticationError,
    ConflictError,
    InferenceTimeoutError,
    InvalidInputError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UnavailableError,
)
from tests.client.fakes import Gateway, envelope, job_status

ROW = [[0.5, 1.5], [2.5, 3.5]]  # any rank: the served model decides
OK = httpx.Response(200, json={"prediction": [1], "worker_id": "0", "inference_time_ms": 0.5})


def test_a_503_is_retried_after_its_retry_after(client, sleeps) -> None:
    gateway = Gateway(envelope(503, "overloaded", **{"Retry-After": "2"}), OK)
    answer = client(gateway).predict(ROW)
    assert answer.prediction == [1] and answer.worker_id == "0"
    assert len(gateway.requests) == 2
    assert sleeps == [2.0]


def test_retry_after_is_capped_by_max_backoff(client, sleeps) -> None:
    gateway = Gateway(envelope(429, "rate_limited", **{"Retry-After": "120"}), OK)
    client(gateway, max_backoff=3.0).predict(ROW)
    assert sleeps == [3.0]


def test_without_retry_after_the_backoff_grows_and_is_capped(client, sleeps) -> None:
    gateway = Gateway(envelope(503, "no_worker_available", "no healthy worker", "req-9"))
    with pytest.raises(UnavailableError) as caught:
        client(gateway, max_retries=6, backoff_factor=1.0, max_backoff=3.0).predict(ROW)
    assert len(gateway.requests) == 7 and len(sleeps) == 6
    assert all(0 <= s <= 3.0 for s in sleeps)
    error = caught.value
    assert (error.status, error.code, error.message, error.request_id) == (503, "no_worker_available",
                                                                           "no healthy worker", "req-9")


def test_a_429_past_its_retries_is_a_rate_limit_error_with_its_retry_after(client, sleeps) -> None:
    gateway = Gateway(envelope(429, "rate_limited", "slow down", **{"Retry-After": "1"}))
    with pytest.raises(RateLimitError) as caught:
        client(gateway, max_retries=2).batch_predict([ROW, ROW])
    assert isinstance(caught.value, UnavailableError)
    assert caught.value.retry_after == 1.0 and caught.value.code == "rate_limited"
    assert len(gateway.requests) == 3 and sleeps == [1.0, 1.0]


@pytest.mark.parametrize(("status", "error_class"), [
    (400, InvalidInputError), (413, InvalidInputError), (422, InvalidInputError), (401, AuthenticationError),
    (403, AuthenticationError), (404, NotFoundError), (409, ConflictError), (500, ServerError),
    (502, ServerError), (504, InferenceTimeoutError),
])
def test_other_errors_are_not_retried_and_carry_the_envelope(client, sleeps, status, error_class) -> None:
    gateway = Gateway(envelope(status, "some_code", "what went wrong", "req-7"))
    with pytest.raises(error_class) as caught:
        client(gateway).predict(ROW)
    assert len(gateway.requests) == 1 and sleeps == []
    error = caught.value
    assert (error.status, error.code, error.message, error.request_id) == (status, "some_code", "what went wrong",
                                                                           "req-7")
    assert str(error) == f"{status} some_code: what went wrong (request req-7)"


def test_a_body_that_is_not_the_envelope_still_gives_a_readable_error(client) -> None:
    gateway = Gateway(httpx.Response(502, text="<html>Bad Gateway</html>", headers={"X-Request-ID": "r-5"}))
    with pytest.raises(ServerError) as caught:
        client(gateway).predict(ROW)
    assert caught.value.code == "http_502" and "Bad Gateway" in caught.value.message
    assert caught.value.request_id == "r-5"


def test_a_refused_connection_is_retried_then_reported(client, sleeps) -> None:
    refused = httpx.ConnectError("connection refused")
    assert client(Gateway(refused, OK)).predict(ROW).prediction == [1]
    gateway = Gateway(refused)
    with pytest.raises(UnavailableError) as caught:
        client(gateway, max_retries=2).predict(ROW)
    assert len(gateway.requests) == 3
    assert caught.value.status is None and caught.value.code == "connection_failed"


def test_a_read_timeout_is_a_timeout_error_and_not_retried(client) -> None:
    gateway = Gateway(httpx.ReadTimeout("too slow"))
    with pytest.raises(InferenceTimeoutError) as caught:
        client(gateway).predict(ROW)
    assert isinstance(caught.value, TimeoutError) and caught.value.code == "timeout"
    assert len(gateway.requests) == 1


def test_retries_of_a_submission_send_the_same_idempotency_key(client) -> None:
    gateway = Gateway(envelope(503, "jobs_unavailable"), httpx.Response(202, json=job_status("queued")))
    job = client(gateway).submit_job("batch_predict", [{"input_data": ROW}])
    assert job.status == "queued" and not job.finished
    keys = [request.headers["idempotency-key"] for request in gateway.requests]
    assert len(keys) == 2 and keys[0] == keys[1] != ""


def test_health_is_not_retried_and_unhealthy_is_an_answer(client, sleeps) -> None:
    gateway = Gateway(httpx.Response(503, json={"status": "unhealthy", "alive_backends": 0, "total_backends": 2}))
    health = client(gateway).health()
    assert health.status == "unhealthy" and health.total_backends == 2
    assert len(gateway.requests) == 1 and sleeps == []
