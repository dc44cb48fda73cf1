"""The real stack: ``python -m launcher`` with a gateway and two workers on loopback ports.

It serves whatever model ``worker/model.py`` (or ``MODEL``) names: requests are
built from the example the workers publish, never from a known model.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support import (
    JAX_CACHE_DIR,
    free_port,
    free_port_run,
    http_ok,
    rows_near,
    same_answer,
    start_process,
    stop_process,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.served_model]


@dataclass
class Stack:
    url: str
    worker_urls: list[str]
    metadata: dict

    @property
    def example(self) -> dict:
        return self.metadata["example"]

    def rows(self, count: int) -> list[dict]:
        """``count`` different rows of the served model's shape and dtype, from its example."""
        return [{"input_data": row} for row in rows_near(self.metadata, count)]

    def health(self) -> dict:
        return httpx.get(f"{self.url}/gateway/health", timeout=2).json()

    def worker_pid(self, index: int) -> int:
        return httpx.get(f"{self.worker_urls[index]}/health", timeout=2).json()["pid"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port_run(3)
    log = tmp_path_factory.mktemp("stack") / "launcher.log"
    env = {"JAX_CACHE_DIR": str(JAX_CACHE_DIR), "HEALTH_INTERVAL_S": "0.5"}
    launcher = start_process(
        [sys.executable, "-m", "launcher", "--workers", "2", "--port", str(port), "--no-sidecars"], env, log
    )
    url, worker_urls = f"http://127.0.0.1:{port}", [f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"]
    try:
        wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the stack")
        assert launcher.poll() is None, log.read_text()
        stack = Stack(url, worker_urls, httpx.get(f"{worker_urls[0]}/metadata").json())
        yield stack
        pids = [stack.worker_pid(0), stack.worker_pid(1)]
    finally:
        code = stop_process(launcher, timeout_s=20)
    assert code == 0, log.read_text()[-3000:]
    for pid in pids:  # Ctrl-C / SIGTERM leaves no process behind
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def without_worker_fields(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key not in ("worker_id", "inference_time_ms")}


def test_predict_through_the_gateway_equals_the_worker_direct(stack: Stack) -> None:
    response = httpx.post(f"{stack.url}/predict", json=stack.example)
    assert response.status_code == 200
    body = response.json()
    assert body["worker_id"] in {"0", "1"} and body["inference_time_ms"] > 0
    direct = httpx.post(f"{stack.worker_urls[0]}/predict", json=stack.example).json()
    assert without_worker_fields(body) == without_worker_fields(direct)
    assert body["prediction"]


def test_batch_predict_answers_in_order(stack: Stack) -> None:
    rows = stack.rows(3) * 4
    response = httpx.post(f"{stack.url}/batch_predict", json=rows)
    assert response.status_code == 200
    one_by_one = [httpx.post(f"{stack.url}/predict", json=row).json() for row in rows[:3]] * 4
    # Alone and within a batch of 12 a row goes through kernels of different batch sizes: equal within float32.
    assert same_answer([answer["prediction"] for answer in response.json()],
                       [answer["prediction"] for answer in one_by_one])


async def test_concurrent_rows_are_gathered_and_each_gets_its_own_answer(stack: Stack) -> None:
    """Gateway-side batching (GATEWAY_BATCHING, on by default): concurrent rows share /batch_predict calls."""
    rows = stack.rows(24)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=len(rows))) as client:
        alone = [(await client.post(f"{stack.url}/predict", json=row)).json() for row in rows]

        async def gathered_calls() -> float:
            text = (await client.get(f"{stack.url}/metrics")).text
            return next((float(line.split()[-1]) for line in text.splitlines()
                         if line.startswith("gateway_batched_calls_total ")), 0.0)

        before = await gathered_calls()
        for burst in range(20):  # until a burst arrived while calls were in flight, as bursts nearly always do
            answers = await asyncio.gather(*(
                client.post(f"{stack.url}/predict", json=row, headers={"X-Request-ID": f"b{burst}-r{i}"})
                for i, row in enumerate(rows)))
            assert [(a.status_code, a.headers["x-request-id"]) for a in answers] == [
                (200, f"b{burst}-r{i}") for i in range(len(rows))]
            assert same_answer([a.json()["prediction"] for a in answers], [a["prediction"] for a in alone])
            assert [set(a.json()) for a in answers] == [set(a) for a in alone]
            if await gathered_calls() > before:
                return
    pytest.fail("no burst of concurrent rows was gathered into one worker call")


def test_requests_alternate_between_the_two_workers(stack: Stack) -> None:
    with httpx.Client() as client:
        ids = [client.post(f"{stack.url}/predict", json=stack.example).json()["worker_id"] for _ in range(6)]
    assert set(ids) == {"0", "1"}
    assert all(a != b for a, b in itertools.pairwise(ids))


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/predict", b'{"input_data": [1.0, 2.0', 400, "malformed_json"),
        ("/predict", b'{"input_data": []}', 422, "invalid_input"),
        ("/predict", b'{"input_data": ["a"]}', 422, "invalid_input"),
        ("/batch_predict", b'{"input_data": [1.0, 2.0]}', 422, "invalid_input"),  # not an array of rows
        ("/predict", b"x" * (1024 * 1024 + 1), 413, "payload_too_large"),
        ("/predict", b'{"input_data": [NaN]}', 422, "invalid_input"),
        ("/nowhere", b"", 404, "not_found"),
    ],
)
def test_bad_input_gets_the_right_4xx_in_the_envelope(stack: Stack, path: str, body: bytes, status: int,
                                                      code: str) -> None:
    response = httpx.post(f"{stack.url}{path}", content=body,
                          headers={"X-Request-ID": "req-42", "Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["request_id"] == "req-42"
    assert response.headers["x-request-id"] == "req-42"


def test_a_request_id_is_generated_when_absent(stack: Stack) -> None:
    response = httpx.post(f"{stack.url}/predict", json={"input_data": ["a"]})  # refused by any model
    assert response.status_code == 422
    assert response.json()["request_id"] == response.headers["x-request-id"] != ""


def test_gateway_routes(stack: Stack) -> None:
    assert stack.health() == {"status": "healthy", "alive_backends": 2, "total_backends": 2}
    info = httpx.get(f"{stack.url}/gateway/info").json()
    assert info["total_backends"] == 2
    assert {b["worker_id"] for b in info["backends"]} == {"0", "1"}
    assert {b["model_name"] for b in info["backends"]} == {stack.metadata["name"]}
    assert all(b["state"] == "healthy" and b["last_probe"] for b in info["backends"])
    assert httpx.get(f"{stack.url}/health").json()["status"] == "healthy"
    assert httpx.get(f"{stack.url}/").json()["docs"] == "/docs"
    assert "gateway_requests_total" in httpx.get(f"{stack.url}/metrics").text


def test_docs_are_served_without_a_cdn(stack: Stack) -> None:
    document = httpx.get(f"{stack.url}/openapi.json").json()
    for path in ("/predict", "/batch_predict", "/health", "/metadata", "/", "/gateway/health", "/gateway/info",
                 "/metrics"):
        assert path in document["paths"], path
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == stack.example
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{stack.url}{page}").text
        assert "http" not in html.replace("/openapi.json", "")  # every asset is local
        for asset in [part.split('"')[0] for part in html.split('src="')[1:]]:
            assert httpx.get(f"{stack.url}{asset}").status_code == 200, asset


def test_no_compilation_after_ready(stack: Stack) -> None:
    def compilations() -> float:
        text = httpx.get(f"{stack.worker_urls[0]}/metrics").text
        return float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("worker_jit_compilations_total")))

    before = compilations()
    with httpx.Client() as client:
        for size in (1, 2, 3, 5, 7, 8, 13, 31, 33, 64, 65, 100, 200):
            rows = stack.rows(size)
            response = client.post(f"{stack.worker_urls[0]}/batch_predict", json=rows)
            assert response.status_code == 200 and len(response.json()) == size
    assert compilations() == before > 0


async def _hammer(url: str, row: dict, clients: int, stop: threading.Event) -> tuple[int, list[str]]:
    ok, failures = 0, []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one_client() -> None:
            nonlocal ok
            while not stop.is_set():
                try:
                    response = await client.post(f"{url}/predict", json=row)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    ok += 1
                else:
                    failures.append(f"{response.status_code} {response.text}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return ok, failures


def test_kill_9_of_a_worker_under_load_loses_no_request(stack: Stack) -> None:
    victim = stack.worker_pid(0)
    stop = threading.Event()
    states: list[str] = []

    def kill_then_watch() -> None:
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and "degraded" not in states:
            states.append(stack.health()["status"])
        time.sleep(0.5)
        stop.set()

    watcher = threading.Thread(target=kill_then_watch)
    watcher.start()
    ok, failures = asyncio.run(_hammer(stack.url, stack.example, 200, stop))
    watcher.join()
    assert failures == []
    assert ok > 200
    assert "degraded" in states
    # The launcher restarts the worker and the health checks bring it back.
    wait_until(lambda: stack.health()["status"] == "healthy", 90, "the restarted worker")
    assert stack.worker_pid(0) != victim


def test_sigterm_drains_in_flight_requests(tmp_path) -> None:
    worker_port, gateway_port = free_port(), free_port()
    slow = start_process([sys.executable, "-m", "bench.slow_worker", str(worker_port), "1.5"], {},
                         tmp_path / "slow.log")
    gateway = start_process(
        [sys.executable, "-m", "gateway"],
        {"PORT": str(gateway_port), "WORKERS": f"127.0.0.1:{worker_port}", "HEALTH_INTERVAL_S": "0.2"},
        tmp_path / "gateway.log",
    )
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        wait_until(lambda: http_ok(f"{url}/gateway/health"), 30, "the gateway")
        result: dict[str, httpx.Response] = {}
        row = {"input_data": [1.0]}  # the slow worker answers any row
        request = threading.Thread(target=lambda: result.update(r=httpx.post(f"{url}/predict", json=row, timeout=10)))
        request.start()
        wait_until(lambda: httpx.get(f"{url}/gateway/info").json()["backends"][0]["in_flight"] == 1, 5,
                   "the request to be in flight")
        gateway.send_signal(signal.SIGTERM)
        request.join(10)
        assert result["r"].status_code == 200
        # Once drained, uvicorn re-raises the signal so the exit status tells how it stopped.
        assert gateway.wait(10) in (0, -signal.SIGTERM)
    finally:
        stop_process(gateway)
        stop_process(slow)
