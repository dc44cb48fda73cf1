"""X-Request-ID: a client's id is kept only when short and plain; anything else is replaced by a generated one."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.request_context import route_label
from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings


@pytest.fixture
def client(jobs_settings: JobsSettings):
    settings = GatewaySettings(workers=["127.0.0.1:9"], request_id_max_length=16)
    with TestClient(create_app(settings, jobs_settings)) as client:
        yield client


def returned_id(client: TestClient, header: bytes | None) -> str:
    headers = {b"x-request-id": header} if header is not None else {}
    return client.get("/gateway/health", headers=headers).headers["x-request-id"]


@pytest.mark.parametrize("given", [b"req-42", b"a.b_c:d-E9", b"x" * 16])
def test_a_plain_id_within_the_bound_is_kept(client: TestClient, given: bytes) -> None:
    assert returned_id(client, given) == given.decode()


@pytest.mark.parametrize(
    "given",
    [b"x" * 17, b"x" * 70_000, "caf\u00e9".encode(), "\u65e5\u672c".encode(), b"a b", b"a/b", b"<script>", b""],
)
def test_any_other_id_is_replaced_by_a_generated_one(client: TestClient, given: bytes) -> None:
    generated = returned_id(client, given)
    assert generated != given.decode("latin-1")
    assert generated.isascii() and generated.isalnum() and len(generated) <= 32


def test_generated_ids_are_unique(client: TestClient) -> None:
    assert len({returned_id(client, None) for _ in range(20)}) == 20


def test_the_id_is_in_the_error_envelope(client: TestClient) -> None:
    response = client.post("/gateway/health", headers={"x-request-id": "kept-1"})
    assert response.json()["request_id"] == "kept-1" == response.headers["x-request-id"]


@pytest.mark.parametrize("chars", ["a-z]|.*", "^a-z", "caf\u00e9", "z-a"])
def test_a_character_set_that_is_not_a_plain_class_is_refused(chars: str) -> None:
    with pytest.raises(ValidationError, match="REQUEST_ID_CHARS"):
        GatewaySettings(request_id_chars=chars)


def test_route_labels_stay_bounded() -> None:
    assert route_label("/predict") == "/predict"
    assert route_label("/jobs/abc/result") == "/jobs/{id}/result"
    assert route_label("/jobs/abc/retry") == "/jobs/{id}/retry"
    assert route_label("/" + "x" * 1000) == "other"
