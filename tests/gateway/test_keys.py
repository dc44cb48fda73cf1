"""Keys made at run time, access per model, quotas and usage, through a gateway and a worker that counts rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from common.model_headers import model_headers
from gateway.app import create_app
from gateway.keys import parse_key_models
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.support import free_port, wait_until
from worker.hot_routes import usage_headers

ADMIN, USER = "admin-key-for-tests", "user-key-for-tests"
MODEL = "counting"
MODEL_MS = 2.5


class RowWorker:
    """Serves MODEL: /predict and /batch_predict answer each row, with the usage headers a real worker sends."""

    def __init__(self) -> None:
        self.port = free_port()
        app = Starlette(routes=[
            Route("/health", self._health), Route("/metadata", self._metadata),
            Route("/predict", self._predict, methods=["POST"]),
            Route("/batch_predict", self._batch, methods=["POST"]),
        ])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def _health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy", "model_name": MODEL, "model_version": "1"})

    async def _metadata(self, request: Request) -> JSONResponse:
        return JSONResponse({"name": MODEL, "version": "1", "inputs": [{"name": "x", "datatype": "FP32",
                                                                          "shape": [-1, 2]}], "outputs": []})

    def _answer(self, answer: object) -> JSONResponse:
        headers = {**model_headers(MODEL, "1"),
                   **{name.decode(): value.decode() for name, value in usage_headers(answer)}}
        return JSONResponse(answer, headers=headers)

    async def _predict(self, request: Request) -> JSONResponse:
        return self._answer({"prediction": [1], "worker_id": "w", "inference_time_ms": MODEL_MS})

    async def _batch(self, request: Request) -> JSONResponse:
        rows = await request.json()
        return self._answer([{"prediction": [1], "worker_id": "w", "inference_time_ms": MODEL_MS} for _ in rows])

    def __enter__(self) -> RowWorker:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the row worker")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def row_worker() -> Iterator[RowWorker]:
    with RowWorker() as worker:
        yield worker


def gateway(row_worker: RowWorker, jobs_settings: JobsSettings, **overrides: object) -> TestClient:
    settings = GatewaySettings(workers=[f"127.0.0.1:{row_worker.port}"], api_keys=[USER], admin_api_keys=[ADMIN],
                               health_interval_s=0.05, access_log=False, gateway_batching=False, **overrides)
    return TestClient(create_app(settings, jobs_settings))


def healthy(client: TestClient) -> None:
    wait_until(lambda: client.get("/gateway/health").status_code == 200, 10, "a healthy worker")


def make_key(client: TestClient, **fields: object) -> dict:
    made = client.post("/admin/keys", json={"name": "test", **fields}, headers=bearer(ADMIN))
    assert made.status_code == 201, made.text
    return made.json()


def test_a_made_key_works_at_once_is_listed_without_its_digest_and_a_revoked_one_is_refused(
    row_worker: RowWorker, jobs_settings: JobsSettings,
) -> None:
    with gateway(row_worker, jobs_settings) as client:
        made = make_key(client, models=[MODEL], rows_per_day=10)
        assert made["key"].startswith("gk_") and made["models"] == [MODEL] and made["rows_per_day"] == 10
        assert client.get("/gateway/info", headers=bearer(made["key"])).status_code == 200
        listed = client.get("/admin/keys", headers=bearer(ADMIN)).json()["keys"]
        mine = [key for key in listed if key["id"] == made["id"]]
        assert mine and "digest" not in mine[0] and "key" not in mine[0]
        assert {key["source"] for key in listed} == {"settings", "database"}
        revoked = client.delete(f"/admin/keys/{made['id']}", headers=bearer(ADMIN))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert client.get("/gateway/info", headers=bearer(made["key"])).status_code == 401
        assert client.delete("/admin/keys/000000000000", headers=bearer(ADMIN)).status_code == 404


def test_another_gateway_process_takes_a_new_key_at_once_and_drops_a_revoked_one_within_the_refresh(
    row_worker: RowWorker, jobs_settings: JobsSettings,
) -> None:
    with gateway(row_worker, jobs_settings, keys_refresh_s=0.2) as one, \
            gateway(row_worker, jobs_settings, keys_refresh_s=0.2) as other:
        made = make_key(one)
        assert other.get("/gateway/info", headers=bearer(made["key"])).status_code == 200
        one.delete(f"/admin/keys/{made['id']}", headers=bearer(ADMIN))
        started = time.monotonic()
        wait_until(lambda: other.get("/gateway/info", headers=bearer(made["key"])).status_code == 401, 5,
                   "the revoked key refused by the other process")
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x", "rows_per_day": -1}, {"name": "x", "extra": 1},
                                  {"name": "x", "rate_limit_per_s": 0}, {"name": "x", "rate_limit_per_s": 1e7},
                                  {"name": "x", "rows_per_month": 2**63}, {"name": "x", "job_rows_per_day": 10**30}])
def test_a_bad_key_request_is_422_and_only_admins_manage_keys(
    row_worker: RowWorker, jobs_settings: JobsSettings, body: dict,
) -> None:
    with gateway(row_worker, jobs_settings) as client:
        bad = client.post("/admin/keys", json=body, headers=bearer(ADMIN))
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_key"
        for method, path in (("POST", "/admin/keys"), ("GET", "/admin/keys"), ("DELETE", "/admin/keys/x"),
                             ("GET", "/admin/usage")):
            assert client.request(method, path, json={"name": "x"}, headers=bearer(USER)).status_code == 403
        configured = client.get("/admin/keys", headers=bearer(ADMIN)).json()["keys"][0]["id"]
        assert client.delete(f"/admin/keys/{configured}", headers=bearer(ADMIN)).status_code == 409


def test_an_infinite_rate_is_422_a_huge_body_413_and_the_keys_still_list(
    row_worker: RowWorker, jobs_settings: JobsSettings,
) -> None:
    with gateway(row_worker, jobs_settings, key_body_max_bytes=1024) as client:
        for rate in ("1e400", "Infinity", "NaN"):
            bad = client.post("/admin/keys", content=f'{{"name": "x", "rate_limit_per_s": {rate}}}',
                              headers=bearer(ADMIN))
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_key", (rate, bad.text)
        huge = client.post("/admin/keys", json={"name": "x", "models": ["m" * 100] * 20}, headers=bearer(ADMIN))
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
        made = make_key(client, rate_limit_per_s=1e6, rows_per_day=2**62)
        listed = client.get("/admin/keys", headers=bearer(ADMIN))
        assert listed.status_code == 200 and made["id"] in {key["id"] for key in listed.json()["keys"]}


def test_a_key_limited_to_some_models_is_403_on_every_other_model_s_routes_and_jobs(
    row_worker: RowWorker, jobs_settings: JobsSettings,
) -> None:
    with gateway(row_worker, jobs_settings, api_key_models=[f"{USER}=other"]) as client:
        healthy(client)
        for path, body in (("/predict", {"x": 1}), ("/batch_predict", [{"x": 1}]), (f"/models/{MODEL}/predict", {}),
                           (f"/v2/models/{MODEL}/infer", {}), ("/jobs", {"task": "batch_predict", "inputs": [{}]}),
                           ("/jobs", {"task": "batch_predict", "model": MODEL, "inputs": [{}]})):
            refused = client.post(path, json=body, headers=bearer(USER))
            assert refused.status_code == 403, (path, refused.text)
        assert client.get(f"/v2/models/{MODEL}", headers=bearer(USER)).status_code == 403
        assert client.post("/predict", json={"x": 1}, headers=bearer(ADMIN)).status_code == 200
        limited = make_key(client, models=[MODEL])
        assert client.post("/predict", json={"x": 1}, headers=bearer(limited["key"])).status_code == 200
        assert client.post("/models/other/predict", json={}, headers=bearer(limited["key"])).status_code == 403


def test_api_key_models_takes_ids_and_keys_and_refuses_a_malformed_entry() -> None:
    assert parse_key_models(["abcdefabcdef=a|b", "plain=c"]) == {
        "abcdefabcdef": frozenset({"a", "b"}), parse_key_models(["plain=x"]).popitem()[0]: frozenset({"c"})}
    for entry in ("nomodels", "key=", "=a"):
        with pytest.raises(ValueError, match="API_KEY_MODELS"):
            parse_key_models([entry])


def test_rows_over_the_day_s_quota_are_429_naming_it_and_a_request_that_would_cross_it_is_refused_whole(
    row_worker: RowWorker, jobs_settings: JobsSettings,
) -> None:
    with gateway(row_worker, jobs_settings) as client:
        healthy(client)
        key = make_key(client, rows_per_day=5)["key"]
        first = client.post("/batch_predict", json=[{"x": 1}] * 3, headers=bearer(key))
        assert first.status_code == 200 and first.headers["ratelimit-remaining"] == "2"
        whole = client.post("/batch_predict", json=[{"x": 1}] * 3, headers=bearer(key))
        assert whole.status_code == 429
        error = whole.json()["error"]
        assert (error["code"], error["quota"], error["limit"], error["used"]) == \
            ("quota_exceeded", "rows_per_day", 5, 3)
        assert error["resets_at"].endswith("T00:00:00Z")
        assert int(whole.headers["retry-after"]) == int(whole.headers["ratelimit-reset"]) <= 86400
        assert whole.headers["ratelimit-limit"] == "5" and whole.headers["ratelimit-remaining"] == "2"
        assert client.post("/batch_predict", json=[{"x": 1}] * 2, headers=bearer(key)).status_code == 200
        assert client.post("/predict", json={"x": 1}, headers=bearer(key)).status_code == 429
        job = client.post("/jobs", json={"task": "batch_predict", "inputs": [{"input_data": [1, 2]}]},
                          headers=bearer(key))
        assert job.status_code == 429 and job.json()["error"]["quota"] == "rows_per_day"
        usage = client.get("/usage", headers=bearer(key)).json()
        assert usage["quotas"][0]["used"] == 5


def test_a_refused_request_gives_its_rows_back(row_worker: RowWorker, jobs_settings: JobsSettings) -> None:
    with gateway(row_worker, jobs_settings) as client:
        healthy(client)
        key = make_key(client, rows_per_day=2)["key"]
        assert client.post("/models/nothing/batch_predict", json=[{}, {}], headers=bearer(key)).status_code == 404
        assert client.post("/batch_predict", json=[{}, {}], headers=bearer(key)).status_code == 200


def test_usage_counts_requests_rows_and_model_time_per_model_and_survives_a_restart(
    row_worker: RowWorker, jobs_settings: JobsSettings,
) -> None:
    with gateway(row_worker, jobs_settings) as client:
        healthy(client)
        key = make_key(client)["key"]
        for _ in range(3):
            assert client.post("/predict", json={"x": 1}, headers=bearer(key)).status_code == 200
        assert client.post("/batch_predict", json=[{"x": 1}] * 4, headers=bearer(key)).status_code == 200
    with gateway(row_worker, jobs_settings) as client:
        usage = client.get("/usage?by=hour", headers=bearer(key)).json()
        totals = usage["totals"]
        assert (totals["requests"], totals["rows"], totals["job_rows"]) == (4, 7, 0)
        assert [cell["model"] for cell in usage["usage"]] == [MODEL]
        every = client.get("/admin/usage", headers=bearer(ADMIN)).json()
        assert every["totals"]["rows"] == 7
        assert client.get("/usage?by=week", headers=bearer(key)).status_code == 422
        assert client.get("/usage?since=yesterday", headers=bearer(key)).status_code == 422
        metrics = client.get("/metrics").text
        assert f'gateway_key_rows_total{{key="{usage["key_id"]}",model="{MODEL}"}}' not in metrics  # other process


def test_usage_sums_the_workers_model_time(row_worker: RowWorker, jobs_settings: JobsSettings) -> None:
    with gateway(row_worker, jobs_settings) as client:
        healthy(client)
        key = make_key(client)["key"]
        assert client.post("/predict", json={"x": 1}, headers=bearer(key)).status_code == 200
        answer = client.post("/batch_predict", json=[{"x": 1}] * 4, headers=bearer(key))
        assert "x-rows" not in answer.headers and "x-inference-time-ms" not in answer.headers
        assert client.get("/usage", headers=bearer(key)).json()["totals"]["model_ms"] == 2 * MODEL_MS


def test_per_key_metrics_name_the_first_keys_and_call_the_rest_other(
    row_worker: RowWorker, jobs_settings: JobsSettings,
) -> None:
    with gateway(row_worker, jobs_settings, usage_metrics_max_keys=1) as client:
        healthy(client)
        first, second = make_key(client), make_key(client)
        for made in (first, second):
            assert client.post("/predict", json={"x": 1}, headers=bearer(made["key"])).status_code == 200
        metrics = client.get("/metrics").text
        assert f'gateway_key_rows_total{{key="{first["id"]}",model="{MODEL}"}} 1.0' in metrics
        assert f'gateway_key_rows_total{{key="other",model="{MODEL}"}} 1.0' in metrics
        assert "gateway_limits_store_up 1.0" in metrics


def test_the_usage_page_is_open_and_holds_no_data(row_worker: RowWorker, jobs_settings: JobsSettings) -> None:
    with gateway(row_worker, jobs_settings) as client:
        page = client.get("/usage/ui")
        assert page.status_code == 200 and "/usage" in page.text and "<script>" in page.text
