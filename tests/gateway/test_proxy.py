"""The proxy against a stand-in worker: redirects, bad answers, clients that leave, overload."""

from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import pytest
from pydantic import ValidationError

from common.forwarder import ConnectTimedOut, WorkerClient
from common.model_headers import answering_model
from gateway.settings import GatewaySettings
from tests.gateway.conftest import StandInWorker, gateway_settings, serve_gateway

ROW = {"input_data": [1, 2, 3, 4]}


async def call(url: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    """Async: the gateway runs on this test's event loop."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.request(method, path, **kwargs)


async def test_a_redirect_from_a_worker_keeps_its_location_as_a_path(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker), jobs_settings) as url:
        response = await call(url, "POST", "/predict/", json=ROW)
    assert response.status_code == 307
    assert response.headers["location"] == "/predict"


async def test_an_8_kb_request_id_is_replaced_and_the_answer_is_the_workers(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker), jobs_settings) as url:
        response = await call(url, "POST", "/predict", json=ROW, headers={"x-request-id": "a" * 8200})
    assert response.status_code == 200
    assert response.json()["seen_request_id"] == response.headers["x-request-id"] != "a" * 8200


async def test_the_answer_names_the_model_that_computed_it(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker), jobs_settings) as url:
        response = await call(url, "POST", "/predict", json=ROW)
    assert answering_model(response.headers) == ("stand-in model", "7")


async def test_an_answer_that_is_not_valid_http_is_named_so(worker, jobs_settings) -> None:
    async with serve_gateway(gateway_settings(worker), jobs_settings) as url:
        response = await call(url, "GET", "/")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_bad_response"
    assert "not valid HTTP" in error["message"] and "8190 bytes" in error["message"]


@pytest.mark.parametrize("path", ["/predict", "/jobs"])
async def test_a_client_that_leaves_mid_body_is_a_quiet_499(worker, jobs_settings, caplog, path: str) -> None:
    async with serve_gateway(gateway_settings(worker), jobs_settings) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
                     + b"Content-Length: 1000\r\n\r\n{\"input_data\": [1,")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        async def counted() -> str:
            async with httpx.AsyncClient() as client:
                while True:  # the gateway handles the disconnect on its own time
                    text = (await client.get(f"{url}/metrics")).text
                    if 'status="499"' in text:
                        return text
                    await asyncio.sleep(0.02)

        metrics = await asyncio.wait_for(counted(), 10)
    assert f'gateway_requests_total{{route="{path}",status="499"}} 1.0' in metrics
    assert 'status="500"' not in metrics
    assert worker.requests == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_past_the_in_flight_bound_requests_are_shed_at_once_with_retry_after(worker, jobs_settings) -> None:
    worker.delay_s = 1.0
    settings = gateway_settings(worker, max_in_flight_per_worker=2, max_connections_per_worker=2)
    async with serve_gateway(settings, jobs_settings) as url, httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(*(client.post(f"{url}/predict", json=ROW) for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503, 503]
    for shed in (r for r in responses if r.status_code == 503):
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["error"] == {
            "code": "overloaded", "message": "every healthy worker has 2 requests in flight",
        }


def test_the_pool_must_hold_the_in_flight_bound() -> None:
    with pytest.raises(ValidationError, match="MAX_CONNECTIONS_PER_WORKER must be at least"):
        GatewaySettings(max_in_flight_per_worker=256, max_connections_per_worker=128)
    defaults = GatewaySettings()
    assert defaults.max_connections_per_worker >= defaults.max_in_flight_per_worker


async def test_a_worker_that_accepts_no_connection_is_a_connect_timeout_not_a_deadline() -> None:
    with socket.socket() as full:  # listening, never accepting: once its queue is full, connects hang
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = []
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            queued.append(sock)
        client = WorkerClient(connect_timeout_s=0.2, max_connections_per_worker=4)
        await client.start()
        try:
            with pytest.raises(ConnectTimedOut, match=r"no connection to http://127.0.0.1:\d+ within 0.2s"):
                await client.send(f"http://127.0.0.1:{port}", "GET", "/health", {}, b"", timeout_s=20)
        finally:
            await client.aclose()
            for sock in queued:
                sock.close()


def test_the_stand_in_worker_is_what_the_tests_think(worker: StandInWorker) -> None:
    assert httpx.get(f"http://{worker.address}/health").json()["status"] == "healthy"


def two_worker_settings(first: StandInWorker, second: StandInWorker, **overrides: object) -> GatewaySettings:
    # Probes far apart: only the proxied requests decide who is in rotation during the test.
    return GatewaySettings(workers=[first.address, second.address], health_interval_s=60, access_log=False,
                           outlier_failures_to_eject=2, **overrides)


async def test_a_hung_worker_costs_one_try_timeout_then_leaves_rotation(jobs_settings) -> None:
    with StandInWorker() as hung, StandInWorker() as fine:
        hung.delay_s = 3.0
        settings = two_worker_settings(hung, fine, try_timeout_s=0.2, request_timeout_s=10)
        async with serve_gateway(settings, jobs_settings) as url, httpx.AsyncClient(timeout=30) as client:
            responses = [await client.post(f"{url}/predict", json=ROW) for _ in range(8)]
            metrics = (await client.get(f"{url}/metrics")).text
            info = (await client.get(f"{url}/gateway/info")).json()
    assert [r.status_code for r in responses] == [200] * 8
    assert len(hung.requests) == 2 and len(fine.requests) == 8
    assert f'gateway_outlier_ejections_total{{backend="http://{hung.address}",model=""}} 1.0' in metrics
    assert 'gateway_retries_total{model="",reason="try_timeout"} 2.0' in metrics
    state = {b["url"]: b for b in info["backends"]}[f"http://{hung.address}"]
    assert state["state"] == "unhealthy" and "2 failed requests in a row" in state["last_error"]


async def test_a_worker_answering_500_in_a_row_leaves_rotation(jobs_settings) -> None:
    with StandInWorker() as failing, StandInWorker() as fine:
        failing.status = 500
        async with serve_gateway(two_worker_settings(failing, fine), jobs_settings) as url, \
                httpx.AsyncClient(timeout=30) as client:
            statuses = [(await client.post(f"{url}/predict", json=ROW)).status_code for _ in range(8)]
    assert statuses.count(500) == 2 and statuses[-4:] == [200] * 4  # a 500 is an answer: not retried
    assert len(failing.requests) == 2


async def test_past_the_overall_deadline_a_slow_worker_is_504_not_retried(worker, jobs_settings) -> None:
    worker.delay_s = 1.0
    settings = gateway_settings(worker, try_timeout_s=5, request_timeout_s=0.3)
    async with serve_gateway(settings, jobs_settings) as url:
        response = await call(url, "POST", "/predict", json=ROW)
    assert response.status_code == 504
    assert len(worker.requests) == 1
