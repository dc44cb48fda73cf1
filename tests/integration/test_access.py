"""Access control on a real stack: no key, no answer; key A's job is not found with key B."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import KeyedStack

pytestmark = [pytest.mark.integration, pytest.mark.served_model]


def test_every_protected_route_is_401_without_a_key_and_answers_with_one(keyed_stack: KeyedStack) -> None:
    document = httpx.get(f"{keyed_stack.url}/openapi.json").json()  # the docs stay open
    key = keyed_stack.auth(keyed_stack.keys[0])
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            url = keyed_stack.url + path.replace("{job_id}", "0" * 32)
            kwargs = {"json": keyed_stack.example} if method == "post" else {}
            answer = httpx.request(method, url, **kwargs)
            if "security" not in operation:  # documented as open: the probes, /metrics (its own key), the job page
                assert answer.status_code == 200, (method, path)
                continue
            assert answer.status_code == 401, (method, path)
            error = answer.json()["error"]  # the project's envelope, or on /v2 the protocol's message
            assert (error if path.startswith("/v2") else error["message"]).startswith("a valid API key is required")
            assert httpx.request(method, url, headers=key, **kwargs).status_code != 401, (method, path)


def test_a_job_of_key_a_is_not_found_with_key_b(keyed_stack: KeyedStack) -> None:
    a, b = (keyed_stack.auth(key) for key in keyed_stack.keys)
    with httpx.Client(base_url=keyed_stack.url, timeout=10) as client:
        job = client.post("/jobs", json={"task": "batch_predict", "inputs": [keyed_stack.example]}, headers=a).json()
        for method, path in [("GET", job["status_url"]), ("GET", job["result_url"]), ("DELETE", job["status_url"])]:
            answer = client.request(method, path, headers=b)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"] == {"code": "job_not_found", "message": f"no job {job['job_id']!r}"}
        assert client.get(job["status_url"], headers=a).json()["status"] == "queued"  # no sidecar runs it
        assert client.get(job["result_url"], headers=a).status_code == 409
        assert client.delete(job["status_url"], headers=a).json()["status"] == "cancelled"
