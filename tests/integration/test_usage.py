"""Keys, quotas, rate limits and usage across two gateway processes (``GATEWAY_PROCESSES=2``), with the embedded
store and with a Redis of the test's own, which is stopped for 10 s under load."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    JAX_CACHE_DIR,
    free_port,
    free_port_run,
    require_redis_server,
    start_process,
    stop_process,
    wait_until,
)

ADMIN = "usage-admin-key"


def launch(folder: Path, port: int, **extra: str) -> subprocess.Popen:
    env = {
        "JAX_CACHE_DIR": str(JAX_CACHE_DIR), "HEALTH_INTERVAL_S": "0.5", "JOBS_DIR": str(folder / "jobs"),
        "ADMIN_API_KEYS": ADMIN, "RATE_LIMIT_PER_S": "10000", "RATE_LIMIT_BURST": "10000", "ACCESS_LOG": "false",
        "KEYS_REFRESH_S": "1", "USAGE_FLUSH_S": "0.5", **extra,
    }
    log = folder / f"launcher-{time.monotonic_ns()}.log"
    launcher = start_process([sys.executable, "-m", "launcher", "--workers", "1", "--port", str(port),
                              "--no-sidecars", "--gateway-processes", "2"], env, log)
    wait_until(lambda: launcher.poll() is not None or "ready in" in log.read_text(), 180, "the stack")
    assert launcher.poll() is None, log.read_text()
    return launcher


def fresh() -> httpx.Client:
    """A client that opens a connection per request, so the kernel hands requests to both gateway processes."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(url: str, **fields: object) -> dict:
    made = httpx.post(f"{url}/admin/keys", json={"name": "it", **fields}, headers=bearer(ADMIN))
    assert made.status_code == 201, made.text
    return made.json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The URL, an example row, the folder and the running launcher (a test may restart it)."""
    folder = tmp_path_factory.mktemp("usage")
    port = free_port_run(2)
    running = {"launcher": launch(folder, port), "folder": folder, "port": port, "url": f"http://127.0.0.1:{port}"}
    try:
        running["example"] = httpx.get(f"http://127.0.0.1:{port + 1}/metadata").json()["example"]
        yield running
    finally:
        stop_process(running["launcher"], timeout_s=20)


def _send_rows(url: str, key: str, example: dict, count: int) -> list[httpx.Response]:
    with fresh() as client:
        return [client.post(f"{url}/predict", json=example, headers=bearer(key)) for _ in range(count)]


def test_a_day_quota_of_100_rows_answers_exactly_100_of_150_across_both_processes(stack) -> None:
    url, example = stack["url"], stack["example"]
    key = make_key(url, rows_per_day=100)["key"]
    answers = _send_rows(url, key, example, 150)
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 100 and statuses.count(429) == 50, statuses
    refused = next(answer for answer in answers if answer.status_code == 429)
    error = refused.json()["error"]
    assert error["quota"] == "rows_per_day" and error["used"] == 100 and error["resets_at"].endswith("T00:00:00Z")
    assert int(refused.headers["retry-after"]) == int(refused.headers["ratelimit-reset"])
    usage = httpx.get(f"{url}/usage", headers=bearer(key)).json()
    wait_until(lambda: httpx.get(f"{url}/usage", headers=bearer(key)).json()["totals"]["rows"] == 100, 5,
               "both processes' usage flushed")
    assert usage["quotas"][0]["used"] == 100


def test_a_key_s_rate_limit_holds_over_both_processes_together(stack) -> None:
    url, example = stack["url"], stack["example"]
    key = make_key(url, rate_limit_per_s=5)["key"]  # its burst: 10
    started = time.monotonic()
    answers = _send_rows(url, key, example, 60)
    elapsed = time.monotonic() - started
    served = [answer.status_code for answer in answers].count(200)
    assert served <= 10 + 5 * elapsed + 1, (served, elapsed)
    assert {answer.status_code for answer in answers} == {200, 429}


def test_a_made_key_works_at_once_everywhere_and_a_revoked_one_is_refused_everywhere_within_5_s(stack) -> None:
    url, example = stack["url"], stack["example"]
    made = make_key(url)
    assert {answer.status_code for answer in _send_rows(url, made["key"], example, 10)} == {200}
    assert httpx.delete(f"{url}/admin/keys/{made['id']}", headers=bearer(ADMIN)).status_code == 200
    revoked_at = time.monotonic()

    def refused_everywhere() -> bool:
        return {answer.status_code for answer in _send_rows(url, made["key"], example, 10)} == {401}

    wait_until(refused_everywhere, 5, "the revoked key refused by both processes")
    assert time.monotonic() - revoked_at <= 5


def test_usage_reports_the_rows_served_after_a_restart_too(stack) -> None:
    url, example = stack["url"], stack["example"]
    key = make_key(url)["key"]
    with fresh() as client:
        for size in (1, 3, 5):
            assert client.post(f"{url}/batch_predict", json=[example] * size, headers=bearer(key)).status_code == 200
    assert {answer.status_code for answer in _send_rows(url, key, example, 4)} == {200}
    wait_until(lambda: httpx.get(f"{url}/usage", headers=bearer(key)).json()["totals"]["rows"] == 13, 5,
               "the usage of both processes")
    totals = httpx.get(f"{url}/usage", headers=bearer(key)).json()["totals"]
    assert totals["requests"] == 7
    stop_process(stack["launcher"], timeout_s=20)
    stack["launcher"] = launch(stack["folder"], stack["port"])  # gateways that never saw these requests
    assert httpx.get(f"{url}/usage", headers=bearer(key)).json()["totals"] == totals


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen], int, Path]]:
    binary = require_redis_server()
    port = free_port()
    servers = [_redis(binary, port, tmp_path)]
    try:
        yield servers, port, Path(binary)
    finally:
        for server in servers:
            if server.poll() is None:
                server.terminate()
                server.wait(10)


def _redis(binary: str, port: int, folder: Path) -> subprocess.Popen:
    server = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)],
                              stdout=subprocess.DEVNULL)
    wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                      text=True).stdout.strip() == "PONG", 10, "redis-server")
    return server


def test_with_redis_the_quota_holds_across_processes_and_a_10_s_outage_under_load_makes_no_5xx(
    own_redis, tmp_path: Path,
) -> None:
    servers, redis_port, binary = own_redis
    port = free_port_run(2)
    launcher = launch(tmp_path, port, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", LIMITS_FAIL_OPEN_S="30")
    url = f"http://127.0.0.1:{port}"
    try:
        example = httpx.get(f"http://127.0.0.1:{port + 1}/metadata").json()["example"]
        quota_key = make_key(url, rows_per_day=100)["key"]
        answers = _send_rows(url, quota_key, example, 150)
        statuses = [answer.status_code for answer in answers]
        assert statuses.count(200) == 100 and statuses.count(429) == 50, {answer.text for answer in answers}
        key = make_key(url, rows_per_day=1_000_000)["key"]
        seen: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with fresh() as client:
                while not stop.is_set():
                    seen.append(client.post(f"{url}/predict", json=example, headers=bearer(key)).status_code)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(1)
        servers[0].terminate()
        servers[0].wait(10)
        time.sleep(10)
        servers.append(_redis(str(binary), redis_port, tmp_path))
        wait_until(lambda: "gateway_limits_store_up 1.0" in httpx.get(f"{url}/metrics").text, 10,
                   "the gateway back on Redis")
        time.sleep(1)
        stop.set()
        loader.join(30)
        assert seen and all(status == 200 for status in seen), sorted(set(seen))
    finally:
        stop_process(launcher, timeout_s=20)
