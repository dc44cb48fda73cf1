"""Access control at the gateway: keys, the same 401 for every wrong key, rate limits, job owners, CORS."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth import hash_key, presented_key
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.jobs.fake_worker import FakeWorker

KEY_A, KEY_B, METRICS_KEY = "key-a-0123456789", "key-b-9876543210", "scrape-me"
HASHED_B = "sha256:" + hashlib.sha256(KEY_B.encode()).hexdigest()
JOB = {"task": "batch_predict", "inputs": [{"input_data": [1.0, 2.0]}]}
PROTECTED = [
    ("POST", "/predict"), ("POST", "/batch_predict"), ("GET", "/health"), ("GET", "/metadata"), ("GET", "/"),
    ("GET", "/gateway/info"), ("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/" + "0" * 32),
    ("DELETE", "/jobs/" + "0" * 32), ("GET", "/jobs/" + "0" * 32 + "/result"), ("GET", "/no-such-route"),
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client_for(jobs_settings: JobsSettings, **overrides: object) -> TestClient:
    # No worker answers: a request that got through to the proxy is 503 no_worker_available.
    settings = GatewaySettings(workers=["127.0.0.1:9"], api_keys=[KEY_A, HASHED_B], **overrides)
    return TestClient(create_app(settings, jobs_settings))


@pytest.fixture
def client(jobs_settings: JobsSettings) -> Iterator[TestClient]:
    with client_for(jobs_settings) as client:
        yield client


@pytest.fixture
def jobs_client(jobs_settings: JobsSettings) -> Iterator[TestClient]:
    """With a worker that publishes its model: a job is accepted only for a served model."""
    worker = FakeWorker(input_shape=(2,)).start()
    settings = GatewaySettings(workers=[worker.url.removeprefix("http://")], api_keys=[KEY_A, HASHED_B])
    try:
        with TestClient(create_app(settings, jobs_settings)) as client:
            yield client
    finally:
        worker.stop()


def test_plain_keys_are_kept_only_as_digests() -> None:
    settings = GatewaySettings(api_keys=f"{KEY_A}, {HASHED_B.upper().replace('SHA256', 'sha256')}",
                               metrics_api_key=METRICS_KEY)
    assert settings.api_keys == [hash_key(KEY_A), HASHED_B]
    assert KEY_A not in settings.model_dump_json() and METRICS_KEY not in settings.model_dump_json()


@pytest.mark.parametrize("entry", ["sha256:abc", "sha256:" + "g" * 64, " "])
def test_a_bad_key_entry_is_refused_at_start(entry: str) -> None:
    with pytest.raises(ValueError, match="sha256|empty"):
        GatewaySettings(api_keys=[entry])


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"authorization", b"Bearer abc")], b"abc"),
        ([(b"authorization", b"bearer  abc ")], b"abc"),
        ([(b"x-api-key", b"abc")], b"abc"),
        ([(b"authorization", b"Basic abc")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([], None),
    ],
)
def test_the_key_comes_from_bearer_or_x_api_key(headers: list[tuple[bytes, bytes]], key: bytes | None) -> None:
    assert presented_key(headers) == key


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers", [{}, bearer("wrong"), {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEY_A}"}, bearer(HASHED_B)],
)
def test_every_protected_route_is_401_without_a_valid_key_and_never_says_why(
    client: TestClient, method: str, path: str, headers: dict[str, str],
) -> None:
    response = client.request(method, path, headers={**headers, "x-request-id": "r1"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {
        "error": {"code": "unauthorized", "message": "a valid API key is required: send it as Authorization: "
                  "Bearer <key> or X-API-Key: <key>"},
        "request_id": "r1",
    }


@pytest.mark.parametrize("headers", [bearer(KEY_A), {"X-API-Key": KEY_B}])
def test_a_valid_key_gets_through(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/predict", json={"input_data": [1.0]}, headers=headers)
    assert response.json()["error"]["code"] == "no_worker_available"


@pytest.mark.parametrize("path", ["/gateway/health", "/v2/health/live", "/v2/health/ready", "/docs", "/redoc",
                                  "/openapi.json", "/metrics", "/jobs/ui"])
def test_probes_docs_and_metrics_stay_open(client: TestClient, path: str) -> None:
    assert client.get(path).status_code in (200, 503)  # /gateway/health is 503: no worker


def test_metrics_take_only_their_own_key(jobs_settings: JobsSettings) -> None:
    with client_for(jobs_settings, metrics_api_key=METRICS_KEY) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer(KEY_A)).status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": METRICS_KEY}).status_code == 200


def test_an_empty_bucket_is_429_with_retry_after_and_other_keys_are_unaffected(jobs_settings: JobsSettings) -> None:
    # 1 token in 1000 s: the bucket cannot refill during the test.
    with client_for(jobs_settings, rate_limit_per_s=0.001, rate_limit_burst=2) as client:
        for _ in range(2):
            assert client.get("/gateway/info", headers=bearer(KEY_A)).status_code == 200
        limited = client.get("/gateway/info", headers=bearer(KEY_A))
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 1000
        assert client.get("/gateway/info", headers=bearer(KEY_B)).status_code == 200
        assert client.get("/gateway/health").status_code == 503  # open routes are not counted


def test_a_job_is_404_to_another_key(jobs_client: TestClient) -> None:
    client = jobs_client
    submitted = client.post("/jobs", json=JOB, headers=bearer(KEY_A))
    assert submitted.status_code == 202
    job = submitted.json()
    assert job["owner"] == hash_key(KEY_A).removeprefix("sha256:")[:12]
    for method, path in [("GET", job["status_url"]), ("GET", job["result_url"]), ("DELETE", job["status_url"])]:
        other = client.request(method, path, headers=bearer(KEY_B))
        assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found", (method, path)
        assert client.request(method, path, headers=bearer(KEY_A)).status_code != 404
    assert client.get(job["status_url"], headers=bearer(KEY_A)).json()["status"] == "cancelled"


def test_the_job_list_shows_each_key_only_its_own_jobs(jobs_client: TestClient) -> None:
    client = jobs_client
    mine = client.post("/jobs", json=JOB, headers=bearer(KEY_A)).json()["job_id"]
    theirs = client.post("/jobs", json=JOB, headers=bearer(KEY_B)).json()["job_id"]
    assert [job["job_id"] for job in client.get("/jobs", headers=bearer(KEY_A)).json()["jobs"]] == [mine]
    assert [job["job_id"] for job in client.get("/jobs", headers=bearer(KEY_B)).json()["jobs"]] == [theirs]


def test_the_job_page_is_open_holds_no_jobs_and_lets_only_its_own_code_run(jobs_client: TestClient) -> None:
    client = jobs_client
    job_id = client.post("/jobs", json=JOB, headers=bearer(KEY_A)).json()["job_id"]
    page = client.get("/jobs/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert job_id not in page.text  # the jobs come from GET /jobs, which takes the key
    policy = dict(directive.strip().split(" ", 1) for directive in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["form-action"] == "'none'"
    assert policy["script-src"].startswith("'sha256-") and "unsafe" not in policy["script-src"]
    assert client.get("/jobs").status_code == 401


def test_the_same_idempotency_key_from_two_keys_makes_two_jobs(jobs_client: TestClient) -> None:
    client = jobs_client
    headers = {"Idempotency-Key": "same"}
    first = client.post("/jobs", json=JOB, headers={**headers, **bearer(KEY_A)}).json()
    second = client.post("/jobs", json=JOB, headers={**headers, **bearer(KEY_B)}).json()
    assert first["job_id"] != second["job_id"]


def test_the_access_log_names_the_key_by_id_never_the_key(jobs_settings: JobsSettings, caplog) -> None:
    settings = GatewaySettings(workers=["127.0.0.1:9"], api_keys=[KEY_A], access_log=True)
    with TestClient(create_app(settings, jobs_settings)) as client, caplog.at_level(logging.INFO, "gateway.access"):
        client.get("/gateway/info", headers=bearer(KEY_A))
    line = next(record.getMessage() for record in caplog.records if record.name == "gateway.access")
    assert f'"key":"{hash_key(KEY_A)[7:19]}"' in line and KEY_A not in line


def test_the_document_names_the_schemes_and_the_answers_of_access_control(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    validate(document)
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    predict = document["paths"]["/predict"]["post"]
    assert {"401", "415", "429"} <= set(predict["responses"]) and predict["security"]
    for open_path in ("/gateway/health", "/jobs/ui"):
        assert "401" not in document["paths"][open_path]["get"]["responses"]
        assert "security" not in document["paths"][open_path]["get"]
    assert document["paths"]["/jobs"]["get"]["security"]


def test_cors_is_off_by_default_and_answers_only_the_listed_origins(jobs_settings: JobsSettings) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    with client_for(jobs_settings) as client:
        assert "access-control-allow-origin" not in client.get("/gateway/health", headers=preflight).headers
    with client_for(jobs_settings, cors_allow_origins="https://app.example.com") as client:
        answer = client.options("/predict", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
        assert answer.status_code == 200  # a preflight needs no key
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        other = client.options("/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400


def test_on_the_protocol_s_routes_a_401_is_the_protocol_s_body(client: TestClient) -> None:
    response = client.post("/v2/models/m/infer", content=b"{}")
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {"error": "a valid API key is required: send it as Authorization: Bearer <key> or "
                                         "X-API-Key: <key>"}
