"""``python -m gateway`` bounds what a client can hold: header deadline and size, listen backlog."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, http_ok, start_process, stop_process, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    env = {"PORT": str(port), "WORKERS": f"127.0.0.1:{free_port()}", "HEADER_TIMEOUT_S": "0.5", "BACKLOG": "100"}
    process = start_process([sys.executable, "-m", "gateway"], env, tmp_path_factory.mktemp("gw") / "gateway.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/gateway/info"), 30, "the gateway")
        yield port
    finally:
        stop_process(process)


def test_half_a_request_line_is_closed_after_the_header_timeout(gateway: int) -> None:
    with socket.create_connection(("127.0.0.1", gateway), timeout=10) as sock:
        sock.sendall(b"GET /gateway/hea")
        assert sock.recv(1024) == b""  # closed; without the deadline recv times out after 10 s


def test_a_70_kb_request_id_is_refused_and_the_gateway_keeps_answering(gateway: int) -> None:
    response = httpx.get(f"http://127.0.0.1:{gateway}/gateway/health", headers={"X-Request-ID": "a" * 70_000})
    assert response.status_code == 431
    assert httpx.get(f"http://127.0.0.1:{gateway}/gateway/health").status_code == 503  # alive, no worker


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read the listen backlog")
def test_the_listen_backlog_is_the_setting(gateway: int) -> None:
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{gateway}"], capture_output=True, text=True).stdout.split()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(listing[2]) == min(100, somaxconn)  # State Recv-Q Send-Q: Send-Q is the backlog
