"""Shared fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.support import free_port, http_ok, start_process, stop_process, wait_until, worker_env


@pytest.fixture(scope="module")
def running_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real worker serving the default model, shared by a test module."""
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_process([sys.executable, "-m", "worker"], worker_env(port), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health") or process.poll() is not None, 120, "the worker")
        assert process.poll() is None, log.read_text()
        yield url
    finally:
        stop_process(process)
