"""What both clients send: rows of any rank (lists or arrays), the API key, job routes, redirects."""

from __future__ import annotations

import json

import httpx
import pytest

import inference_client
from inference_client import InferenceClient, JobResult
from tests.client.fakes import Gateway, job_status

PREDICTION = {"prediction": [2], "worker_id": "1", "inference_time_ms": 0.3, "label": "c"}


def test_rows_of_any_rank_are_sent_as_given(client) -> None:
    gateway = Gateway(httpx.Response(200, json=[PREDICTION, PREDICTION]))
    rows = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
    answers = client(gateway).batch_predict(rows, return_probabilities=True)
    assert json.loads(gateway.requests[0].content) == [
        {"input_data": row, "return_probabilities": True} for row in rows
    ]
    assert [answer.prediction for answer in answers] == [[2], [2]]
    assert answers[0].label == "c"  # the model's own fields come through


def test_numpy_arrays_are_sent_as_lists(client) -> None:
    np = pytest.importorskip("numpy")
    gateway = Gateway(httpx.Response(200, json=PREDICTION), httpx.Response(200, json=[PREDICTION] * 3))
    caller = client(gateway)
    caller.predict(np.arange(4, dtype=np.float32).reshape(2, 2))
    caller.batch_predict(np.zeros((3, 2)))
    assert json.loads(gateway.requests[0].content)["input_data"] == [[0.0, 1.0], [2.0, 3.0]]
    assert [item["input_data"] for item in json.loads(gateway.requests[1].content)] == [[0.0, 0.0]] * 3


def test_the_api_key_is_a_bearer_token(client, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = Gateway(httpx.Response(200, json=PREDICTION))
    client(gateway, api_key="secret").predict([1.0])
    monkeypatch.setenv("INFERENCE_API_KEY", "from-env")
    client(gateway).predict([1.0])
    client(gateway, api_key="").predict([1.0])
    assert [request.headers.get("authorization") for request in gateway.requests] == [
        "Bearer secret", "Bearer from-env", None,
    ]


def test_the_url_comes_from_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_URL", "http://elsewhere:9090/")
    with InferenceClient() as client:
        assert client.base_url == "http://elsewhere:9090"
    monkeypatch.delenv("GATEWAY_URL")
    with InferenceClient() as client:
        assert client.base_url == "http://127.0.0.1:8080"


def test_job_routes(client) -> None:
    gateway = Gateway(
        httpx.Response(202, json=job_status("queued")), httpx.Response(200, json=job_status("running", 2)),
        httpx.Response(202, json={**job_status("running", 2), "cancel_requested": True}),
        httpx.Response(202, json={**job_status("queued"), "earlier_runs": [
            {"attempts": 3, "error": {"code": "delivery_limit", "message": "gave up"},
             "started_at": "2026-01-01T00:00:01Z", "finished_at": "2026-01-01T00:00:02Z"},
        ]}),
    )
    caller = client(gateway)
    submitted = caller.submit_job("train", options={"seed": 1}, idempotency_key="k-1")
    status = caller.job_status("a/b")
    cancelled = caller.cancel("j1")
    retried = caller.retry_job("j1")
    assert submitted.status == "queued" and status.progress.done == 2 and cancelled.cancel_requested
    assert submitted.earlier_runs == [] and retried.status == "queued"
    assert [(run.attempts, run.error.code) for run in retried.earlier_runs] == [(3, "delivery_limit")]
    first, second, third, fourth = gateway.requests
    assert json.loads(first.content) == {"task": "train", "options": {"seed": 1}}
    assert first.headers["idempotency-key"] == "k-1"
    assert second.url.raw_path == b"/jobs/a%2Fb"  # an id never escapes its path segment
    assert (third.method, third.url.path) == ("DELETE", "/jobs/j1")
    assert (fourth.method, fourth.url.path, fourth.content) == ("POST", "/jobs/j1/retry", b"")


def test_a_large_result_follows_the_redirect_without_the_api_key(client) -> None:
    result = {"job_id": "j1", "task": "batch_predict", "output": [PREDICTION]}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "gateway.test":
            return httpx.Response(307, headers={"Location": "http://store.test/bucket/j1/result.json?sig=x"})
        return httpx.Response(200, json=result)

    gateway = Gateway(answer)
    got = client(gateway, api_key="secret").result("j1")
    assert isinstance(got, JobResult) and got.output[0]["prediction"] == [2]
    to_gateway, to_store = gateway.requests
    assert to_gateway.headers["authorization"] == "Bearer secret"
    assert to_store.url.host == "store.test" and "authorization" not in to_store.headers


def test_an_unexpected_answer_is_a_server_error(client) -> None:
    with pytest.raises(inference_client.ServerError) as caught:
        client(Gateway(httpx.Response(200, json={"status": "nonsense"}))).job_status("j1")
    assert caught.value.code == "unexpected_answer" and caught.value.status == 200


def test_the_public_api_is_pinned() -> None:
    assert sorted(inference_client.__all__) == [
        "ActivationResult", "AsyncInferenceClient", "AuthenticationError", "BackendInfo", "ConflictError",
        "EarlierRun", "GatewayHealth", "GatewayInfo", "InferenceClient", "InferenceError", "InferenceTimeoutError",
        "InvalidInputError", "JobCancelledError", "JobErrorInfo", "JobFailedError", "JobResult", "JobStatus",
        "ModelSummary", "ModelVersion", "ModelVersions", "NotFoundError", "Prediction", "Progress", "RateLimitError",
        "ServerError", "UnavailableError", "WorkerChange",
    ]
    public = {name for name in vars(inference_client) if not name.startswith("_")}
    assert public == set(inference_client.__all__)
    for name in inference_client.__all__:
        assert getattr(inference_client, name).__module__.startswith("inference_client._")
    errors = [getattr(inference_client, name) for name in inference_client.__all__ if name.endswith("Error")]
    assert all(issubclass(error, inference_client.InferenceError) for error in errors)
