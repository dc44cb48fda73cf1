"""The model routes of a real gateway (uvicorn, in process) over a fake worker (its admin API, served by uvicorn).

Status codes and JSON errors: a bad traffic value, an unknown model or version (404), a non-admin key (403),
a broken upload (422 with the reason, nothing registered); and the Open Inference Protocol's repository
extension through ``tritonclient.http`` itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from gateway.settings import GatewaySettings
from jobs.settings import JobsSettings
from tests.gateway.conftest import serve_gateway
from tests.gateway.test_activation import MODEL, FakeWorker
from tests.support import ServedApp, free_port

USER, ADMIN = "user-key-for-tests", "admin-key-for-tests"


@pytest.fixture
def fake_worker() -> Iterator[tuple[FakeWorker, str]]:
    """A FakeWorker on a free port; yields it and its address."""
    port = free_port()
    worker = FakeWorker(f"127.0.0.1:{port}")
    served = ServedApp(worker.app, "fake-worker", port)
    served.start()
    yield worker, served.address
    served.stop()


@pytest.fixture
async def gateway(fake_worker: tuple[FakeWorker, str], tmp_path: Path) -> AsyncIterator[str]:
    settings = GatewaySettings(workers=[fake_worker[1]], health_interval_s=0.05, model_reconcile_s=0.05,
                               access_log=False, api_keys=[USER], admin_api_keys=[ADMIN], rate_limit_per_s=0)
    async with serve_gateway(settings, JobsSettings(jobs_dir=tmp_path / "jobs")) as url:
        yield url


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def model(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(f"/models/{MODEL}/versions", headers=auth(USER))
    assert response.status_code == 200, response.text
    return response.json()


async def upload(client: httpx.AsyncClient, key: str, files: dict[str, bytes]) -> httpx.Response:
    return await client.post(f"/models/{MODEL}/versions", headers=auth(key),
                             files=[("files", (name, data)) for name, data in files.items()])


@pytest.fixture
async def client(gateway: str, fake_worker: tuple[FakeWorker, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A client once the first start registered the worker's files as version 1 and the worker serves it."""
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        async with asyncio.timeout(10):
            while fake_worker[0].serving["origin"] != "registry":
                await asyncio.sleep(0.05)  # start-up only
        yield http


async def test_listing_is_open_to_any_valid_key_and_shows_the_first_start(client: httpx.AsyncClient) -> None:
    listed = await client.get("/models", headers=auth(USER))
    assert listed.status_code == 200
    assert [(m["name"], m["active"], m["versions"]) for m in listed.json()["models"]] == [(MODEL, "1", 1)]
    described = await model(client)
    assert described["active"] == "1" and described["versions"][0]["source"] == "shipped"
    assert described["history"][0]["action"] == "first start"
    assert (await client.get("/models")).status_code == 401
    assert (await client.get("/models/ui")).status_code == 200  # the page holds no data: open


@pytest.mark.parametrize(("method", "path"), [
    ("POST", f"/models/{MODEL}/versions"), ("POST", f"/models/{MODEL}/versions/1/activate"),
    ("POST", f"/models/{MODEL}/rollback"), ("POST", f"/v2/repository/models/{MODEL}/load"),
    ("POST", f"/v2/repository/models/{MODEL}/unload"),
])
async def test_changes_need_an_admin_key(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, headers=auth(USER))
    assert response.status_code == 403
    error = response.json()["error"]
    assert "admin key" in (error if path.startswith("/v2") else error["message"])


async def test_upload_activate_canary_rollback(client: httpx.AsyncClient, fake_worker: tuple[FakeWorker, str]) -> None:
    worker = fake_worker[0]
    uploaded = await upload(client, ADMIN, {"params.npz": b"new params", "notes.txt": b"v2"})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["version"] == "2" and uploaded.json()["source"] == "upload"
    assert not any(label.startswith("check-") for label in worker.loaded)  # the checked copy was dropped
    activated = await client.post(f"/models/{MODEL}/versions/2/activate", headers=auth(ADMIN))
    assert activated.status_code == 200, activated.text
    assert activated.json()["active"] == "2" and activated.json()["workers"][0]["ok"] is True
    assert worker.serving["active"] == "2"
    canary = await client.post(f"/models/{MODEL}/versions/1/activate", headers=auth(ADMIN), json={"traffic": 10})
    assert canary.status_code == 200 and (worker.serving["canary"], worker.serving["canary_traffic"]) == ("1", 10)
    rolled = await client.post(f"/models/{MODEL}/rollback", headers=auth(ADMIN))
    assert rolled.status_code == 200 and rolled.json()["active"] == "1" and worker.serving["canary"] is None


async def test_a_broken_upload_is_422_with_the_reason_and_nothing_is_registered(
    client: httpx.AsyncClient, fake_worker: tuple[FakeWorker, str],
) -> None:
    fake_worker[0].refuse = "load: params.npz is not a NumPy archive"
    refused = await upload(client, ADMIN, {"params.npz": b"garbage"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "version_refused"
    assert "not a NumPy archive" in refused.json()["error"]["message"]
    assert len((await model(client))["versions"]) == 1
    for files, reason in (({}, "at least one files field"), ({"../x": b"1"}, "plain file name")):
        response = await upload(client, ADMIN, files)
        assert response.status_code == 422 and reason in response.json()["error"]["message"], response.text


@pytest.mark.parametrize("body", [{"traffic": 0}, {"traffic": 101}, {"traffic": "10"}, {"traffic": True},
                                  {"share": 10}, [10]])
async def test_a_bad_traffic_value_is_422(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post(f"/models/{MODEL}/versions/1/activate", headers=auth(ADMIN), json=body)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_version"


async def test_unknown_models_and_versions_are_404(client: httpx.AsyncClient) -> None:
    for path, code in ((f"/models/{MODEL}/versions/9/activate", "version_not_found"),
                       (f"/models/{MODEL}/versions/x/activate", "version_not_found"),
                       ("/models/other/versions/1/activate", "version_not_found")):
        response = await client.post(path, headers=auth(ADMIN))
        assert response.status_code == 404 and response.json()["error"]["code"] == code, response.text
    missing = await client.get("/models/other/versions", headers=auth(USER))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    malformed = await client.post(f"/models/{MODEL}/versions/1/activate", headers=auth(ADMIN), content=b"{")
    assert malformed.status_code == 400


async def test_tritonclient_lists_unloads_and_loads(client: httpx.AsyncClient, gateway: str,
                                                    fake_worker: tuple[FakeWorker, str]) -> None:
    assert (await upload(client, ADMIN, {"params.npz": b"v2"})).status_code == 201
    # tritonclient's gevent connections belong to the thread that made them: one thread makes and uses them all.
    thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    async def in_thread(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(thread, functools.partial(call, *args, **kwargs))

    triton_client = await in_thread(triton.InferenceServerClient, gateway.removeprefix("http://"))
    headers = auth(ADMIN)
    index = await in_thread(triton_client.get_model_repository_index, headers=auth(USER))
    assert index == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""},
                     {"name": MODEL, "version": "2", "state": "UNAVAILABLE", "reason": "not active"}]
    await in_thread(triton_client.unload_model, MODEL, headers=headers)
    assert fake_worker[0].serving["loaded"] is False
    index = await in_thread(triton_client.get_model_repository_index, headers=auth(USER))
    assert index[0]["state"] == "UNAVAILABLE" and index[0]["reason"] == "unloaded"
    await in_thread(triton_client.load_model, MODEL, headers=headers)
    assert fake_worker[0].serving["loaded"] is True
    with pytest.raises(InferenceServerException, match="admin key"):
        await in_thread(triton_client.unload_model, MODEL, headers=auth(USER))
    with pytest.raises(InferenceServerException, match="no versions"):
        await in_thread(triton_client.load_model, "other", headers=headers)
    metadata = await in_thread(triton_client.get_server_metadata, headers=auth(USER))
    assert "model_repository" in metadata["extensions"] and "binary_tensor_data" in metadata["extensions"]
    await in_thread(triton_client.close)
    thread.shutdown()
