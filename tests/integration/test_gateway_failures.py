"""The gateway's answers when workers are missing or slow: 503 at once, 504 past the deadline."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, http_ok, start_process, stop_process, wait_until

pytestmark = pytest.mark.integration


def start_gateway(tmp_path: Path, workers: str, **env: str) -> Iterator[str]:
    port = free_port()
    process = start_process(
        [sys.executable, "-m", "gateway"], {"PORT": str(port), "WORKERS": workers, **env}, tmp_path / "gateway.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/gateway/info"), 30, "the gateway")
        yield url
    finally:
        stop_process(process)


@pytest.fixture
def gateway_without_workers(tmp_path: Path) -> Iterator[str]:
    yield from start_gateway(tmp_path, f"127.0.0.1:{free_port()}")


@pytest.fixture
def gateway_with_slow_worker(tmp_path: Path) -> Iterator[str]:
    worker_port = free_port()
    slow = start_process([sys.executable, "-m", "bench.slow_worker", str(worker_port), "3"], {},
                         tmp_path / "slow.log")
    try:
        yield from start_gateway(tmp_path, f"127.0.0.1:{worker_port}", REQUEST_TIMEOUT_S="0.5",
                                 HEALTH_INTERVAL_S="0.2")
    finally:
        stop_process(slow)


def test_no_healthy_worker_is_503_with_retry_after(gateway_without_workers: str) -> None:
    health = httpx.get(f"{gateway_without_workers}/gateway/health")
    assert health.status_code == 503
    assert health.json() == {"status": "unhealthy", "alive_backends": 0, "total_backends": 1}
    response = httpx.post(f"{gateway_without_workers}/predict", json={"input_data": [1, 2, 3, 4]})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "no_worker_available"


def test_a_body_over_the_limit_is_413_before_any_worker_is_asked(gateway_without_workers: str) -> None:
    response = httpx.post(f"{gateway_without_workers}/predict", content=b"x" * (1024 * 1024 + 1),
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_a_worker_slower_than_the_deadline_is_504(gateway_with_slow_worker: str) -> None:
    wait_until(lambda: httpx.get(f"{gateway_with_slow_worker}/gateway/health").status_code == 200, 10, "health")
    response = httpx.post(f"{gateway_with_slow_worker}/predict", json={"input_data": [1, 2, 3, 4]}, timeout=10)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
